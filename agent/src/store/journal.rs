//! The electronic journal: an append-only record of every step of every session, kept
//! for audit and reconciliation (SQL triggers refuse updates and deletes). Exportable as
//! JSON lines or CSV.

use std::io::Write;

use qrcash_protocol::{OrderId, TxId};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::StoreError;

/// What a journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    /// The agent started.
    Started,
    /// The camera read a code that verified offline.
    CodeRead,
    /// The camera read a code that did not verify (forged, expired, other issuer).
    CodeRejected,
    /// `CodePresented` was queued for the hub.
    Presented,
    /// The hub asked the customer to confirm on the phone.
    AwaitConfirmation,
    /// A session ended without an order (abort, timeout, refusal).
    SessionEnded,
    /// A dispense order arrived and passed verification.
    OrderReceived,
    /// An order was refused without touching the dispenser.
    OrderRefused,
    /// Write-ahead record: the order is about to go to the dispenser.
    DispenseStarted,
    /// What the dispenser reported.
    DeviceOutcome,
    /// The dispense report was queued for the hub.
    Reported,
    /// The hub acknowledged an outbox message.
    Delivered,
    /// The hub refused an outbox message permanently; it moved to dead letters.
    DeadLetter,
    /// An interrupted dispense was recovered at start-up.
    Recovered,
    /// The outbox reached its bound.
    OutboxFull,
    /// A message from the hub was refused (signature, replay, addressing).
    InboundRejected,
    /// The dispenser stopped answering: the ATM went out of service (an alarm).
    DeviceFault,
    /// A technician set a cassette's count (replenished or counted it).
    CassetteSet,
    /// A hub key was learned from a key set endorsed by a trusted key, or forgotten.
    HubKey,
    /// A technician removed a dead letter after dealing with it.
    DeadLetterCleared,
    /// The board handed over to a new key (`qrcash-agent rotate-key`).
    KeyRotated,
}

impl JournalKind {
    fn as_str(self) -> &'static str {
        match self {
            JournalKind::Started => "started",
            JournalKind::CodeRead => "code_read",
            JournalKind::CodeRejected => "code_rejected",
            JournalKind::Presented => "presented",
            JournalKind::AwaitConfirmation => "await_confirmation",
            JournalKind::SessionEnded => "session_ended",
            JournalKind::OrderReceived => "order_received",
            JournalKind::OrderRefused => "order_refused",
            JournalKind::DispenseStarted => "dispense_started",
            JournalKind::DeviceOutcome => "device_outcome",
            JournalKind::Reported => "reported",
            JournalKind::Delivered => "delivered",
            JournalKind::DeadLetter => "dead_letter",
            JournalKind::Recovered => "recovered",
            JournalKind::OutboxFull => "outbox_full",
            JournalKind::InboundRejected => "inbound_rejected",
            JournalKind::DeviceFault => "device_fault",
            JournalKind::CassetteSet => "cassette_set",
            JournalKind::HubKey => "hub_key",
            JournalKind::DeadLetterCleared => "dead_letter_cleared",
            JournalKind::KeyRotated => "key_rotated",
        }
    }
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the journal (strictly increasing).
    pub id: i64,
    /// When, Unix seconds.
    pub at: u64,
    /// What.
    pub kind: String,
    /// The transaction, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    /// The order, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Details (JSON). Never holds secrets: tokens are journalled by transaction id only.
    pub detail: serde_json::Value,
}

/// Appends an entry through any connection or open transaction.
pub(crate) fn append(
    conn: &Connection,
    at: u64,
    kind: JournalKind,
    tx_id: Option<TxId>,
    order_id: Option<OrderId>,
    detail: &serde_json::Value,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO journal (at, kind, tx_id, order_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            at as i64,
            kind.as_str(),
            tx_id.map(|t| t.to_string()),
            order_id.map(|o| o.to_string()),
            detail.to_string()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

impl Store {
    /// Appends a journal entry (its own transaction).
    pub fn journal(
        &mut self,
        at: u64,
        kind: JournalKind,
        tx_id: Option<TxId>,
        order_id: Option<OrderId>,
        detail: serde_json::Value,
    ) -> Result<i64, StoreError> {
        append(self.conn(), at, kind, tx_id, order_id, &detail)
    }

    /// Up to `limit` entries after id `after`, oldest first.
    pub fn journal_entries(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT id, at, kind, tx_id, order_id, detail FROM journal WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, kind, tx_id, order_id, detail) = row?;
            out.push(JournalEntry {
                id,
                at: at.max(0) as u64,
                kind,
                tx_id,
                order_id,
                detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt {
                    what: "journal detail",
                    detail: e.to_string(),
                })?,
            });
        }
        Ok(out)
    }

    /// The last `n` entries, oldest first.
    pub fn journal_tail(&mut self, n: u32) -> Result<Vec<JournalEntry>, StoreError> {
        let last: i64 =
            self.conn()
                .query_row("SELECT COALESCE(MAX(id), 0) FROM journal", [], |r| r.get(0))?;
        self.journal_entries(last.saturating_sub(i64::from(n)), n)
    }

    /// Entries of one kind, oldest first (for tests and the status command).
    pub fn journal_of_kind(&mut self, kind: JournalKind) -> Result<Vec<JournalEntry>, StoreError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.journal_entries(after, 500)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            all.extend(page.into_iter().filter(|e| e.kind == kind.as_str()));
        }
        Ok(all)
    }

    /// Writes the whole journal as JSON lines.
    pub fn export_jsonl(&mut self, out: &mut dyn Write) -> Result<u64, ExportError> {
        self.export(out, |e, out| {
            let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        })
    }

    /// Writes the whole journal as CSV with a header line.
    pub fn export_csv(&mut self, out: &mut dyn Write) -> Result<u64, ExportError> {
        writeln!(out, "id,at,kind,tx_id,order_id,detail")?;
        self.export(out, |e, out| {
            writeln!(
                out,
                "{},{},{},{},{},{}",
                e.id,
                e.at,
                csv_field(&e.kind),
                csv_field(e.tx_id.as_deref().unwrap_or("")),
                csv_field(e.order_id.as_deref().unwrap_or("")),
                csv_field(&e.detail.to_string())
            )
        })
    }

    fn export(
        &mut self,
        out: &mut dyn Write,
        mut line: impl FnMut(&JournalEntry, &mut dyn Write) -> std::io::Result<()>,
    ) -> Result<u64, ExportError> {
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = self.journal_entries(after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for e in &page {
                line(e, out)?;
                n += 1;
            }
        }
        out.flush()?;
        Ok(n)
    }
}

/// Exporting the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        ExportError::Store(e.into())
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;
    use serde_json::json;

    #[test]
    fn journal_is_append_only_and_exports() {
        let (_dir, mut s) = testing::store();
        let tx = TxId([1; 16]);
        s.journal(10, JournalKind::CodeRead, Some(tx), None, json!({"a": 1}))
            .unwrap();
        s.journal(
            11,
            JournalKind::Presented,
            Some(tx),
            None,
            json!({"note": "x,\"y\""}),
        )
        .unwrap();
        assert!(
            s.conn()
                .execute("UPDATE journal SET kind = 'x'", [])
                .is_err()
        );
        assert!(s.conn().execute("DELETE FROM journal", []).is_err());

        let mut jsonl = Vec::new();
        assert_eq!(s.export_jsonl(&mut jsonl).unwrap(), 2);
        let lines: Vec<serde_json::Value> = String::from_utf8(jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["kind"], "code_read");
        assert_eq!(lines[1]["tx_id"], tx.to_string());

        let mut csv = Vec::new();
        s.export_csv(&mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.starts_with("id,at,kind,tx_id,order_id,detail\n"));
        assert!(csv.contains(r#""{""note"":""x,\""y\""""}""#), "{csv}");
        assert_eq!(s.journal_of_kind(JournalKind::Presented).unwrap().len(), 1);
        let tail = s.journal_tail(1).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].kind, "presented");
    }
}
