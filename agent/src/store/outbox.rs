//! The outbox: sealed messages to the hub, kept on disk until the hub's `Ack` names their
//! `jti`. Sent in insertion order; a message the hub refuses permanently moves to the
//! dead-letter table so it cannot block the queue forever. Bounded: at the bound, normal
//! messages (new sessions, heartbeats) are refused with an alarm, while critical ones
//! (dispense reports, order refusals) are still accepted, because losing them would lose
//! track of money.

use qrcash_protocol::SenderWindow;
use qrcash_protocol::messages::RejectReason;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Store, journal, meta};
use crate::error::StoreError;
use crate::store::JournalKind;

/// Size limits of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxBounds {
    /// Most messages queued before normal messages are refused.
    pub max_messages: u64,
    /// Most bytes queued before normal messages are refused.
    pub max_bytes: u64,
}

impl Default for OutboxBounds {
    fn default() -> Self {
        OutboxBounds {
            max_messages: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Whether a message may be refused when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Refused at the bound (code presentations, heartbeats, cancellations).
    Normal,
    /// Always accepted (dispense reports, order refusals): losing it loses track of money.
    Critical,
}

/// A message sealed for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its `jti`.
    pub jti: String,
    /// Its message type (`DispenseReport`, …).
    pub kind: &'static str,
    /// The JWS compact text.
    pub sealed: String,
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Queue position.
    pub id: i64,
    /// Its `jti`.
    pub jti: String,
    /// Its message type.
    pub kind: String,
    /// Critical (never refused at the bound).
    pub critical: bool,
    /// The JWS text.
    pub sealed: String,
    /// When queued, Unix seconds.
    pub created_at: u64,
    /// How many times it was published.
    pub attempts: u32,
}

/// A message the hub refused permanently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its `jti`.
    pub jti: String,
    /// Its message type.
    pub kind: String,
    /// When it was queued.
    pub created_at: u64,
    /// When the hub refused it.
    pub failed_at: u64,
    /// The hub's reason (JSON of the `Rejected`).
    pub reason: String,
}

/// Outbox figures for status and heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxStats {
    /// Messages waiting.
    pub messages: u64,
    /// Their size.
    pub bytes: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// When the oldest waiting message was queued.
    pub oldest_created_at: Option<u64>,
    /// Whether the bound is reached.
    pub full: bool,
}

fn stats(conn: &Connection, bounds: OutboxBounds) -> Result<OutboxStats, StoreError> {
    let (messages, bytes, oldest): (i64, i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(sealed)), 0), MIN(created_at) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let dead: i64 = conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
    let (messages, bytes) = (messages.max(0) as u64, bytes.max(0) as u64);
    Ok(OutboxStats {
        messages,
        bytes,
        dead_letters: dead.max(0) as u64,
        oldest_created_at: oldest.map(|o| o.max(0) as u64),
        full: messages >= bounds.max_messages || bytes >= bounds.max_bytes,
    })
}

/// The `seq` of the oldest message waiting in the outbox (messages are queued in `seq`
/// order), read from its sealed claims.
pub(crate) fn oldest_waiting_seq(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let sealed: Option<String> = conn
        .query_row("SELECT sealed FROM outbox ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let claims = qrcash_protocol::Sealed::parse(sealed.as_bytes(), usize::MAX)
        .and_then(|s| s.peek::<serde_json::Value>())
        .map_err(|e| StoreError::Corrupt {
            what: "outbox message",
            detail: e.to_string(),
        })?;
    Ok(Some(claims.seq))
}

impl Store {
    /// The key id that signed each message waiting in the outbox, oldest first.
    pub fn outbox_signers(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT sealed FROM outbox ORDER BY id")?;
        let sealed = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        sealed
            .iter()
            .map(|s| {
                qrcash_protocol::Sealed::parse(s.as_bytes(), usize::MAX)
                    .map(|p| p.kid().to_string())
                    .map_err(|e| StoreError::Corrupt {
                        what: "outbox message",
                        detail: e.to_string(),
                    })
            })
            .collect()
    }
}

/// Queues a message inside the caller's transaction: reserves the next `seq`, lets `seal`
/// build the message with it, and stores it. Normal messages are refused at the bound.
pub(crate) fn enqueue_in(
    tx: &Transaction<'_>,
    bounds: OutboxBounds,
    priority: Priority,
    now: u64,
    seal: impl FnOnce(u64) -> Outgoing,
) -> Result<Outgoing, StoreError> {
    let s = stats(tx, bounds)?;
    if s.full && priority == Priority::Normal {
        return Err(StoreError::OutboxFull {
            messages: s.messages,
            bytes: s.bytes,
            max_messages: bounds.max_messages,
            max_bytes: bounds.max_bytes,
        });
    }
    let seq = meta::next_seq(tx)?;
    let out = seal(seq);
    tx.execute(
        "INSERT INTO outbox (jti, kind, critical, sealed, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            out.jti,
            out.kind,
            priority == Priority::Critical,
            out.sealed,
            now as i64
        ],
    )?;
    Ok(out)
}

impl Store {
    /// Queues one message in its own transaction.
    pub fn enqueue(
        &mut self,
        priority: Priority,
        now: u64,
        seal: impl FnOnce(u64) -> Outgoing,
    ) -> Result<Outgoing, StoreError> {
        let bounds = self.bounds;
        let tx = self.conn().transaction()?;
        let out = enqueue_in(&tx, bounds, priority, now, seal)?;
        tx.commit()?;
        Ok(out)
    }

    /// Up to `limit` waiting messages, oldest first.
    pub fn pending(&mut self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT id, jti, kind, critical, sealed, created_at, attempts FROM outbox ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(OutboxMessage {
                id: r.get(0)?,
                jti: r.get(1)?,
                kind: r.get(2)?,
                critical: r.get(3)?,
                sealed: r.get(4)?,
                created_at: r.get::<_, i64>(5)?.max(0) as u64,
                attempts: r.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that messages were published (for status and diagnostics).
    pub fn mark_sent(&mut self, ids: &[i64], now: u64) -> Result<(), StoreError> {
        let tx = self.conn().transaction()?;
        for id in ids {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_sent_at = ?2 WHERE id = ?1",
                params![id, now as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes acknowledged messages; returns `(jti, kind)` of those that were waiting
    /// (unknown or already deleted ids are ignored: acks may repeat).
    pub fn ack(&mut self, jtis: &[String], now: u64) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.conn().transaction()?;
        let removed = ack_in(&tx, jtis, now)?;
        tx.commit()?;
        Ok(removed)
    }

    /// [`Store::ack`] and saving the hub's replay window `window` in one transaction that
    /// is committed *without* its own fsync (`synchronous=NORMAL` for this commit only).
    ///
    /// Why that is safe: the database is in WAL mode, so the next fully synced commit (any
    /// journal or write-ahead record) makes this one durable too, in order. What a power cut
    /// can lose is only the latest deletions and window updates: the outbox then resends
    /// those messages, the hub acknowledges the duplicates again by `jti` (at-least-once),
    /// and replaying a hub `Ack` is harmless. Orders never rely on this window alone: their
    /// id is checked in `orders`, written with a full fsync before any dispense. Without the
    /// fsync an outbox drains ~5x faster after a long offline period (docs/BENCHMARKS.md).
    pub fn ack_with_window(
        &mut self,
        jtis: &[String],
        now: u64,
        window: SenderWindow,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.conn().pragma_update(None, "synchronous", "NORMAL")?;
        let result = (|| -> Result<Vec<(String, String)>, StoreError> {
            let tx = self.conn().transaction()?;
            let removed = ack_in(&tx, jtis, now)?;
            meta::save_hub_window(&tx, window)?;
            tx.commit()?;
            Ok(removed)
        })();
        // Back to full durability for every other write, whatever happened above.
        let restored = self.conn().pragma_update(None, "synchronous", "FULL");
        let removed = result?;
        restored?;
        Ok(removed)
    }

    /// Moves a waiting message to the dead letters (the hub refused it permanently).
    /// Returns false if no such message was waiting.
    pub fn dead_letter(
        &mut self,
        jti: &str,
        reason: &RejectReason,
        message: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let tx = self.conn().transaction()?;
        let reason_json = serde_json::json!({ "reason": reason, "message": message });
        let moved = tx.execute(
            "INSERT INTO dead_letters (jti, kind, sealed, created_at, failed_at, reason)
             SELECT jti, kind, sealed, created_at, ?2, ?3 FROM outbox WHERE jti = ?1",
            params![jti, now as i64, reason_json.to_string()],
        )?;
        if moved == 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM outbox WHERE jti = ?1", [jti])?;
        journal::append(
            &tx,
            now,
            JournalKind::DeadLetter,
            None,
            None,
            &serde_json::json!({ "jti": jti, "refusal": reason_json }),
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Outbox figures.
    pub fn outbox_stats(&mut self) -> Result<OutboxStats, StoreError> {
        let bounds = self.bounds;
        stats(self.conn(), bounds)
    }

    /// All dead letters, oldest first.
    pub fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT jti, kind, created_at, failed_at, reason FROM dead_letters ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetter {
                jti: r.get(0)?,
                kind: r.get(1)?,
                created_at: r.get::<_, i64>(2)?.max(0) as u64,
                failed_at: r.get::<_, i64>(3)?.max(0) as u64,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes the dead letter `jti` (a technician dealt with it), journalled as
    /// `dead_letter_cleared`; false when there is none.
    pub fn clear_dead_letter(&mut self, jti: &str, now: u64) -> Result<bool, StoreError> {
        let tx = self.conn().transaction()?;
        let n = tx.execute("DELETE FROM dead_letters WHERE jti = ?1", [jti])?;
        if n > 0 {
            let detail = serde_json::json!({ "jti": jti });
            super::journal::append(
                &tx,
                now,
                JournalKind::DeadLetterCleared,
                None,
                None,
                &detail,
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// Whether a message of `kind` is waiting (avoids piling up heartbeats).
    pub fn has_pending_kind(&mut self, kind: &str) -> Result<bool, StoreError> {
        let n: i64 =
            self.conn()
                .query_row("SELECT COUNT(*) FROM outbox WHERE kind = ?1", [kind], |r| {
                    r.get(0)
                })?;
        Ok(n > 0)
    }
}

/// Deletes acknowledged messages inside the caller's transaction (see [`Store::ack`]).
fn ack_in(
    tx: &Transaction<'_>,
    jtis: &[String],
    now: u64,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut removed = Vec::new();
    for jti in jtis {
        let kind: Option<String> = {
            use rusqlite::OptionalExtension;
            tx.query_row("SELECT kind FROM outbox WHERE jti = ?1", [jti], |r| {
                r.get(0)
            })
            .optional()?
        };
        let Some(kind) = kind else { continue };
        tx.execute("DELETE FROM outbox WHERE jti = ?1", [jti])?;
        if kind != "Heartbeat" {
            journal::append(
                tx,
                now,
                JournalKind::Delivered,
                None,
                None,
                &serde_json::json!({ "jti": jti, "kind": kind }),
            )?;
        }
        removed.push((jti.clone(), kind));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn msg(kind: &'static str) -> impl FnOnce(u64) -> Outgoing {
        move |seq| Outgoing {
            jti: format!("j{seq}"),
            kind,
            sealed: format!("sealed-{seq}-{}", "x".repeat(10)),
        }
    }

    /// A real sealed message with `seq` (the probe reads the oldest one's claims).
    fn sealed(kind: &'static str) -> impl FnOnce(u64) -> Outgoing {
        move |seq| {
            let signer =
                qrcash_protocol::Signer::new("atm-1", qrcash_protocol::PrivateKey::generate());
            let claims = qrcash_protocol::Claims::new(
                "atm-1",
                "hub",
                seq,
                1,
                std::time::Duration::from_secs(60),
                serde_json::json!({ "type": kind }),
            );
            Outgoing {
                jti: claims.jti.clone(),
                kind,
                sealed: signer.seal(&claims),
            }
        }
    }

    #[test]
    fn a_probe_seq_never_overtakes_a_waiting_message_by_the_span_and_is_never_reused() {
        let (_dir, mut s) = testing::store();
        // An empty outbox: nothing to overtake.
        assert_eq!(s.reserve_probe_seq(4).unwrap(), Some(1));
        let waiting = s
            .enqueue(Priority::Critical, 5, sealed("DispenseReport"))
            .unwrap();
        assert_eq!(oldest_waiting_seq(s.conn()).unwrap(), Some(2));
        // Within the span of the waiting message (seq 2): 3, 4, 5.
        for want in 3..=5 {
            assert_eq!(s.reserve_probe_seq(4).unwrap(), Some(want));
        }
        // 6 would be 4 ahead: refused, and the number is not spent.
        assert_eq!(s.reserve_probe_seq(4).unwrap(), None);
        assert_eq!(s.last_seq().unwrap(), 5);
        let next = s.enqueue(Priority::Normal, 6, sealed("Heartbeat")).unwrap();
        assert!(next.sealed.len() > 10);
        assert_eq!(s.last_seq().unwrap(), 6, "the agent's next message takes 6");
        // Once the waiting message is delivered, the probe may go on.
        s.ack(std::slice::from_ref(&waiting.jti), 7).unwrap();
        assert_eq!(oldest_waiting_seq(s.conn()).unwrap(), Some(6));
        assert_eq!(s.reserve_probe_seq(4).unwrap(), Some(7));
    }

    #[test]
    fn fifo_order_seq_and_delete_only_on_ack() {
        let (_dir, mut s) = testing::store();
        for _ in 0..3 {
            s.enqueue(Priority::Normal, 5, msg("CodePresented"))
                .unwrap();
        }
        let p = s.pending(10).unwrap();
        assert_eq!(
            p.iter().map(|m| m.jti.as_str()).collect::<Vec<_>>(),
            ["j1", "j2", "j3"]
        );
        s.mark_sent(&[p[0].id], 6).unwrap();
        assert_eq!(s.pending(1).unwrap()[0].attempts, 1);
        // Ack the middle one and an unknown one; acks repeat harmlessly.
        let removed = s.ack(&["j2".into(), "nope".into()], 7).unwrap();
        assert_eq!(removed, vec![("j2".to_owned(), "CodePresented".to_owned())]);
        assert!(s.ack(&["j2".into()], 8).unwrap().is_empty());
        let left: Vec<_> = s.pending(10).unwrap().into_iter().map(|m| m.jti).collect();
        assert_eq!(left, ["j1", "j3"]);
        assert_eq!(s.last_seq().unwrap(), 3);
        assert_eq!(s.journal_of_kind(JournalKind::Delivered).unwrap().len(), 1);
    }

    #[test]
    fn ack_with_window_deletes_saves_the_window_and_restores_full_sync() {
        let (_dir, mut s) = testing::store();
        for _ in 0..3 {
            s.enqueue(Priority::Normal, 5, msg("CodePresented"))
                .unwrap();
        }
        let w = SenderWindow::default().record(7);
        let removed = s
            .ack_with_window(&["j1".into(), "j3".into(), "nope".into()], 9, w)
            .unwrap();
        assert_eq!(removed.len(), 2);
        let left: Vec<_> = s.pending(10).unwrap().into_iter().map(|m| m.jti).collect();
        assert_eq!(left, ["j2"]);
        assert_eq!(s.hub_window().unwrap(), w);
        assert_eq!(s.journal_of_kind(JournalKind::Delivered).unwrap().len(), 2);
        // Every later write is fully synced again (2 = FULL).
        let sync: i64 = s
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
    }

    #[test]
    fn permanent_refusal_moves_to_dead_letters_and_unblocks_the_queue() {
        let (_dir, mut s) = testing::store();
        s.enqueue(Priority::Critical, 1, msg("DispenseReport"))
            .unwrap();
        s.enqueue(Priority::Normal, 1, msg("Heartbeat")).unwrap();
        assert!(
            s.dead_letter("j1", &RejectReason::UnknownTransaction, "no such tx", 2)
                .unwrap()
        );
        assert!(
            !s.dead_letter("j1", &RejectReason::Malformed, "again", 3)
                .unwrap()
        );
        assert_eq!(s.pending(10).unwrap()[0].jti, "j2");
        let dead = s.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].reason.contains("unknown_transaction"),
            "{}",
            dead[0].reason
        );
        assert_eq!(s.outbox_stats().unwrap().dead_letters, 1);
    }

    #[test]
    fn bound_refuses_normal_messages_but_keeps_critical_ones() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = OutboxBounds {
            max_messages: 2,
            max_bytes: 1 << 20,
        };
        let mut s = Store::open(&dir.path().join("a.db"), bounds).unwrap();
        s.enqueue(Priority::Normal, 1, msg("CodePresented"))
            .unwrap();
        s.enqueue(Priority::Normal, 1, msg("CodePresented"))
            .unwrap();
        let err = s
            .enqueue(Priority::Normal, 1, msg("CodePresented"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::OutboxFull { messages: 2, .. }),
            "{err}"
        );
        // The refused message used no seq.
        assert_eq!(s.last_seq().unwrap(), 2);
        s.enqueue(Priority::Critical, 1, msg("DispenseReport"))
            .unwrap();
        let st = s.outbox_stats().unwrap();
        assert_eq!(st.messages, 3);
        assert!(st.full);
        // Byte bound.
        let dir2 = tempfile::tempdir().unwrap();
        let mut s = Store::open(
            &dir2.path().join("b.db"),
            OutboxBounds {
                max_messages: 100,
                max_bytes: 30,
            },
        )
        .unwrap();
        s.enqueue(Priority::Normal, 1, msg("Heartbeat")).unwrap();
        s.enqueue(Priority::Normal, 1, msg("Heartbeat")).unwrap();
        assert!(s.enqueue(Priority::Normal, 1, msg("Heartbeat")).is_err());
    }

    #[test]
    fn queue_and_seq_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        {
            let mut s = Store::open(&path, OutboxBounds::default()).unwrap();
            s.enqueue(Priority::Normal, 1, msg("CodePresented"))
                .unwrap();
            s.enqueue(Priority::Normal, 1, msg("CodePresented"))
                .unwrap();
        }
        let mut s = Store::open(&path, OutboxBounds::default()).unwrap();
        assert_eq!(s.pending(10).unwrap().len(), 2);
        let out = s
            .enqueue(Priority::Normal, 1, msg("CodePresented"))
            .unwrap();
        assert_eq!(out.jti, "j3", "seq continues after a restart");
    }
}
