//! Order records and the write-ahead rule: an order is recorded as `dispensing` and
//! committed (fsync) *before* the first byte goes to the dispenser, and an order id that
//! was ever started is never dispensed again (primary key plus an explicit check). The
//! outcome, the journal lines and the queued report are committed in one transaction, so a
//! crash leaves either "dispensing, no outcome" (recovered at start-up) or everything.

use qrcash_protocol::OrderId;
use qrcash_protocol::messages::{DispenseOrder, DispenseReport};
use qrcash_protocol::replay::SenderWindow;
use rusqlite::{OptionalExtension, Row, params};

use super::outbox::{Outgoing, Priority, enqueue_in};
use super::{JournalKind, Store, journal, meta};
use crate::error::StoreError;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Journalled and handed (or about to be handed) to the dispenser; no outcome yet.
    Dispensing,
    /// The outcome is recorded and its report queued.
    Finished,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    /// The order as received.
    pub order: DispenseOrder,
    /// Where it stands.
    pub state: OrderState,
    /// When it was journalled as dispensing.
    pub started_at: u64,
    /// The report, once finished.
    pub report: Option<DispenseReport>,
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn record(row: &Row<'_>) -> rusqlite::Result<(String, String, i64, Option<String>)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn decode(raw: (String, String, i64, Option<String>)) -> Result<OrderRecord, StoreError> {
    let (state, order, started_at, report) = raw;
    Ok(OrderRecord {
        order: serde_json::from_str(&order).map_err(|e| corrupt("order", e))?,
        state: match state.as_str() {
            "dispensing" => OrderState::Dispensing,
            _ => OrderState::Finished,
        },
        started_at: started_at.max(0) as u64,
        report: report
            .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("dispense report", e)))
            .transpose()?,
    })
}

impl Store {
    /// Write-ahead: records `order` as dispensing, with a `DispenseStarted` journal line and
    /// (if given) the hub window that accepted it, in one committed transaction. Fails with
    /// [`StoreError::OrderAlreadyStarted`] if the order id was ever started before.
    pub fn begin_dispense(
        &mut self,
        order: &DispenseOrder,
        now: u64,
        hub_window: Option<SenderWindow>,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let tx = self.conn().transaction()?;
        let id = order.order_id.to_string();
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM orders WHERE order_id = ?1", [&id], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::OrderAlreadyStarted(id));
        }
        let json = serde_json::to_string(order).map_err(|e| corrupt("order", e))?;
        tx.execute(
            "INSERT INTO orders (order_id, tx_id, state, order_json, started_at)
             VALUES (?1, ?2, 'dispensing', ?3, ?4)",
            params![id, order.tx_id.to_string(), json, now as i64],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::OrderAlreadyStarted(id.clone())
            }
            e => e.into(),
        })?;
        journal::append(
            &tx,
            now,
            JournalKind::DispenseStarted,
            Some(order.tx_id),
            Some(order.order_id),
            &detail,
        )?;
        if let Some(w) = hub_window {
            meta::save_hub_window(&tx, w)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the outcome of a dispensing order and queues its report (critical), in one
    /// transaction: journal `DeviceOutcome` (with `device_detail`) and `Reported`.
    pub fn finish_dispense(
        &mut self,
        report: &DispenseReport,
        device_detail: serde_json::Value,
        now: u64,
        seal: impl FnOnce(u64) -> Outgoing,
    ) -> Result<Outgoing, StoreError> {
        let bounds = self.bounds;
        let tx = self.conn().transaction()?;
        let id = report.order_id.to_string();
        let json = serde_json::to_string(report).map_err(|e| corrupt("dispense report", e))?;
        let updated = tx.execute(
            "UPDATE orders SET state = 'finished', report_json = ?2, finished_at = ?3
             WHERE order_id = ?1 AND state = 'dispensing'",
            params![id, json, now as i64],
        )?;
        if updated != 1 {
            return Err(StoreError::Corrupt {
                what: "order state",
                detail: format!(
                    "order {id} is not dispensing; its outcome cannot be recorded twice"
                ),
            });
        }
        journal::append(
            &tx,
            now,
            JournalKind::DeviceOutcome,
            Some(report.tx_id),
            Some(report.order_id),
            &device_detail,
        )?;
        super::cassettes::count_out(&tx, report, now)?;
        let out = enqueue_in(&tx, bounds, Priority::Critical, now, seal)?;
        journal::append(
            &tx,
            now,
            JournalKind::Reported,
            Some(report.tx_id),
            Some(report.order_id),
            &serde_json::json!({
                "jti": out.jti,
                "outcome": report.outcome,
                "dispensed": report.dispensed,
            }),
        )?;
        tx.commit()?;
        Ok(out)
    }

    /// The record of `order_id`, if it was ever started.
    pub fn order(&mut self, order_id: OrderId) -> Result<Option<OrderRecord>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                "SELECT state, order_json, started_at, report_json FROM orders WHERE order_id = ?1",
                [order_id.to_string()],
                record,
            )
            .optional()?;
        raw.map(decode).transpose()
    }

    /// Orders journalled as dispensing without an outcome (to recover at start-up).
    pub fn unfinished_orders(&mut self) -> Result<Vec<OrderRecord>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT state, order_json, started_at, report_json FROM orders
             WHERE state = 'dispensing' ORDER BY started_at, order_id",
        )?;
        let raw = stmt.query_map([], record)?.collect::<Result<Vec<_>, _>>()?;
        raw.into_iter().map(decode).collect()
    }

    /// How many orders were ever started.
    pub fn order_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::testing;
    use qrcash_protocol::messages::{DispenseOutcome, NoteCount};
    use qrcash_protocol::{Amount, Currency, TxId};

    pub(crate) fn order(n: u8) -> DispenseOrder {
        DispenseOrder {
            order_id: OrderId([n; 16]),
            tx_id: TxId([n; 16]),
            atm_id: "atm-1".into(),
            amount: Amount::new(20_000, Currency::JPY),
            notes: vec![NoteCount {
                denomination: 10_000,
                count: 2,
            }],
            expires_at: 100,
        }
    }

    fn report(o: &DispenseOrder) -> DispenseReport {
        DispenseReport {
            order_id: o.order_id,
            tx_id: o.tx_id,
            notes: vec![],
            dispensed: o.amount,
            outcome: DispenseOutcome::Dispensed,
            device_error: None,
            max_dispensed: None,
            source: None,
        }
    }

    #[test]
    fn an_order_is_started_at_most_once_even_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let o = order(1);
        {
            let mut s = Store::open(&path, Default::default()).unwrap();
            s.begin_dispense(&o, 10, None, serde_json::json!({}))
                .unwrap();
            let err = s
                .begin_dispense(&o, 11, None, serde_json::json!({}))
                .unwrap_err();
            assert!(matches!(err, StoreError::OrderAlreadyStarted(_)), "{err}");
        }
        let mut s = Store::open(&path, Default::default()).unwrap();
        assert!(matches!(
            s.begin_dispense(&o, 12, None, serde_json::json!({})),
            Err(StoreError::OrderAlreadyStarted(_))
        ));
        // Written ahead: visible as unfinished after the "crash".
        let unfinished = s.unfinished_orders().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].order, o);
        assert_eq!(unfinished[0].state, OrderState::Dispensing);
        assert_eq!(
            s.journal_of_kind(JournalKind::DispenseStarted)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn finishing_records_outcome_and_queues_the_report_atomically() {
        let (_dir, mut s) = testing::store();
        let o = order(2);
        s.begin_dispense(
            &o,
            10,
            Some(SenderWindow::default().record(4)),
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(s.hub_window().unwrap().highest, 4);
        let r = report(&o);
        let out = s
            .finish_dispense(&r, serde_json::json!({"device": "ok"}), 11, |seq| {
                Outgoing {
                    jti: format!("r{seq}"),
                    kind: "DispenseReport",
                    sealed: "x".into(),
                }
            })
            .unwrap();
        assert_eq!(out.jti, "r1");
        let rec = s.order(o.order_id).unwrap().unwrap();
        assert_eq!(rec.state, OrderState::Finished);
        assert_eq!(rec.report, Some(r.clone()));
        assert!(s.unfinished_orders().unwrap().is_empty());
        assert_eq!(s.pending(10).unwrap()[0].kind, "DispenseReport");
        assert!(s.pending(10).unwrap()[0].critical);
        // A second outcome for the same order is refused and changes nothing.
        assert!(
            s.finish_dispense(&r, serde_json::json!({}), 12, |_| Outgoing {
                jti: "again".into(),
                kind: "DispenseReport",
                sealed: "y".into(),
            })
            .is_err()
        );
        assert_eq!(s.pending(10).unwrap().len(), 1);
        assert_eq!(s.last_seq().unwrap(), 1);
    }
}
