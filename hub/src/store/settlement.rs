//! The records around settling cash in doubt: the dispense reports of an order (as evidence),
//! operators' resolutions, correcting postings proposed when a later report contradicts a
//! settlement, and phone pushes queued by operator commands for the running service.
//!
//! Storage only; the rules are in `evidence` and `admin`.

use super::sql::{OptionalExt, Row, SqlError, params};
use qrcash_protocol::messages::{DispenseReport, PhonePush};
use qrcash_protocol::{OrderId, TxId};

use super::{Db, from_sql, to_sql};
use crate::error::StoreError;

/// Every report received for `order` of `tx`, oldest first, as the ATM sent it.
pub fn reports_of(
    db: Db<'_>,
    tx: &TxId,
    order: &OrderId,
) -> Result<Vec<DispenseReport>, StoreError> {
    let texts = db.rows_cached(
        "SELECT report FROM dispense_reports WHERE tx_id = ?1 AND order_id = ?2 ORDER BY id",
        params![tx.to_string(), order.to_string()],
        |r| r.get::<String>(0),
    )?;
    texts
        .iter()
        .map(|t| {
            serde_json::from_str(t)
                .map_err(|e| StoreError::Corrupt(format!("dispense report of {tx}: {e}")))
        })
        .collect()
}

/// An operator's settlement of a withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolutionRow {
    /// Who settled it.
    pub operator: String,
    /// Why (what was counted, who was asked).
    pub reason: String,
    /// Value settled as paid out.
    pub dispensed: u64,
    /// The evidence's lower bound at the time.
    pub low: u64,
    /// The evidence's upper bound at the time.
    pub high: u64,
    /// The evidence as shown to the operator (JSON).
    pub evidence: String,
    /// When.
    pub resolved_at: u64,
}

/// Records a resolution (one per withdrawal: a settled withdrawal cannot be resolved again).
pub fn record_resolution(db: Db<'_>, tx: &TxId, r: &ResolutionRow) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO resolutions(tx_id, operator, reason, dispensed, low, high, evidence, resolved_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            tx.to_string(),
            r.operator,
            r.reason,
            to_sql(r.dispensed),
            to_sql(r.low),
            to_sql(r.high),
            r.evidence,
            to_sql(r.resolved_at)
        ],
    )?;
    Ok(())
}

/// The resolution of `tx`, if an operator settled it.
pub fn resolution(db: Db<'_>, tx: &TxId) -> Result<Option<ResolutionRow>, StoreError> {
    Ok(db
        .row_cached(
            "SELECT operator, reason, dispensed, low, high, evidence, resolved_at
             FROM resolutions WHERE tx_id = ?1",
            [tx.to_string()],
            |r| {
                Ok(ResolutionRow {
                    operator: r.get(0)?,
                    reason: r.get(1)?,
                    dispensed: from_sql(r.get(2)?),
                    low: from_sql(r.get(3)?),
                    high: from_sql(r.get(4)?),
                    evidence: r.get(5)?,
                    resolved_at: from_sql(r.get(6)?),
                })
            },
        )
        .optional()?)
}

/// Where a proposed correction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrectionState {
    /// Waiting for an operator's decision; the books are known to be wrong meanwhile.
    Proposed,
    /// Applied.
    Approved,
    /// Turned down (with a note).
    Rejected,
}

impl CorrectionState {
    fn as_str(self) -> &'static str {
        match self {
            CorrectionState::Proposed => "proposed",
            CorrectionState::Approved => "approved",
            CorrectionState::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "proposed" => Ok(CorrectionState::Proposed),
            "approved" => Ok(CorrectionState::Approved),
            "rejected" => Ok(CorrectionState::Rejected),
            other => Err(StoreError::Corrupt(format!("correction state {other:?}"))),
        }
    }
}

/// A correction of a settlement, proposed from a report that contradicts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionRow {
    /// Its number.
    pub id: i64,
    /// The withdrawal.
    pub tx_id: String,
    /// Value settled now.
    pub from_settled: u64,
    /// Value the report says left the machine.
    pub to_settled: u64,
    /// What contradicted the settlement.
    pub cause: String,
    /// Where it stands.
    pub state: CorrectionState,
    /// When proposed.
    pub proposed_at: u64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When decided.
    pub decided_at: Option<u64>,
    /// The decision's note.
    pub decision_note: Option<String>,
}

/// Proposes a correction unless the same one is already waiting; returns its id.
pub fn propose_correction(
    db: Db<'_>,
    tx: &TxId,
    from_settled: u64,
    to_settled: u64,
    cause: &str,
    now: u64,
) -> Result<i64, StoreError> {
    let open: Option<i64> = db
        .row_cached(
            "SELECT id FROM corrections
             WHERE tx_id = ?1 AND to_settled = ?2 AND state = 'proposed'",
            params![tx.to_string(), to_sql(to_settled)],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = open {
        return Ok(id);
    }
    Ok(db.row_cached(
        "INSERT INTO corrections(tx_id, from_settled, to_settled, cause, state, proposed_at)
         VALUES (?1, ?2, ?3, ?4, 'proposed', ?5) RETURNING id",
        params![
            tx.to_string(),
            to_sql(from_settled),
            to_sql(to_settled),
            cause,
            to_sql(now)
        ],
        |r| r.get(0),
    )?)
}

fn correction_from(r: &Row<'_>) -> Result<(CorrectionRow, String), SqlError> {
    Ok((
        CorrectionRow {
            id: r.get(0)?,
            tx_id: r.get(1)?,
            from_settled: from_sql(r.get(2)?),
            to_settled: from_sql(r.get(3)?),
            cause: r.get(4)?,
            state: CorrectionState::Proposed,
            proposed_at: from_sql(r.get(6)?),
            decided_by: r.get(7)?,
            decided_at: r.get::<Option<i64>>(8)?.map(from_sql),
            decision_note: r.get(9)?,
        },
        r.get(5)?,
    ))
}

const CORRECTION_COLUMNS: &str = "id, tx_id, from_settled, to_settled, cause, state, proposed_at,
     decided_by, decided_at, decision_note";

/// Corrections of `tx` (all when `None`), oldest first; only waiting ones with `open`.
pub fn corrections(
    db: Db<'_>,
    tx: Option<&TxId>,
    open: bool,
) -> Result<Vec<CorrectionRow>, StoreError> {
    let sql = format!(
        "SELECT {CORRECTION_COLUMNS} FROM corrections
         WHERE (CAST(?1 AS TEXT) IS NULL OR tx_id = ?1) AND (?2 = 0 OR state = 'proposed') ORDER BY id"
    );
    let rows = db.rows_cached(
        &sql,
        params![tx.map(|t| t.to_string()), open],
        correction_from,
    )?;
    rows.into_iter()
        .map(|(mut c, state)| {
            c.state = CorrectionState::parse(&state)?;
            Ok(c)
        })
        .collect()
}

/// One correction by number.
pub fn correction(db: Db<'_>, id: i64) -> Result<Option<CorrectionRow>, StoreError> {
    let sql = format!("SELECT {CORRECTION_COLUMNS} FROM corrections WHERE id = ?1");
    let row = db.row_cached(&sql, [id], correction_from).optional()?;
    row.map(|(mut c, state)| {
        c.state = CorrectionState::parse(&state)?;
        Ok(c)
    })
    .transpose()
}

/// Records the decision on a waiting correction; `false` if it was no longer waiting.
pub fn decide_correction(
    db: Db<'_>,
    id: i64,
    state: CorrectionState,
    by: &str,
    note: &str,
    now: u64,
) -> Result<bool, StoreError> {
    let n = db.exec_cached(
        "UPDATE corrections SET state = ?2, decided_by = ?3, decided_at = ?4, decision_note = ?5
         WHERE id = ?1 AND state = 'proposed'",
        params![id, state.as_str(), by, to_sql(now), note],
    )?;
    Ok(n == 1)
}

/// Queues a push for the running service to seal and publish.
pub fn queue_push(db: Db<'_>, device: &str, push: &PhonePush, now: u64) -> Result<(), StoreError> {
    let json = serde_json::to_string(push)
        .map_err(|e| StoreError::Corrupt(format!("push to {device}: {e}")))?;
    db.exec_cached(
        "INSERT INTO pending_pushes(device_id, push, created_at) VALUES (?1, ?2, ?3)",
        params![device, json, to_sql(now)],
    )?;
    Ok(())
}

/// Takes every queued push (removed in the caller's transaction, so a crash before its
/// commit leaves them queued).
pub fn take_pushes(db: Db<'_>) -> Result<Vec<(String, PhonePush)>, StoreError> {
    let rows = db.rows_cached(
        "SELECT device_id, push FROM pending_pushes ORDER BY id",
        [],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    )?;
    db.exec_cached("DELETE FROM pending_pushes", [])?;
    rows.into_iter()
        .map(|(device, json)| {
            serde_json::from_str(&json)
                .map(|push| (device.clone(), push))
                .map_err(|e| StoreError::Corrupt(format!("queued push to {device}: {e}")))
        })
        .collect()
}

/// A dispense report as received, for [`record_report`].
#[derive(Debug)]
pub struct ReceivedReport<'a> {
    /// The reporting ATM.
    pub atm: &'a str,
    /// The `jti` of the message that carried it.
    pub jti: &'a str,
    /// When it arrived.
    pub at: u64,
    /// The report.
    pub report: &'a DispenseReport,
    /// The report as received (JSON), kept for the operator.
    pub json: &'a str,
    /// Whether it moved the withdrawal (false: kept as evidence only).
    pub applied: bool,
}

/// Keeps a dispense report, applied or not: every report an ATM sends is evidence.
pub fn record_report(db: Db<'_>, r: &ReceivedReport<'_>) -> Result<(), StoreError> {
    db.exec_cached(
        "INSERT INTO dispense_reports(tx_id, order_id, atm_id, jti, received_at, outcome,
                                      dispensed, report, applied)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            r.report.tx_id.to_string(),
            r.report.order_id.to_string(),
            r.atm,
            r.jti,
            to_sql(r.at),
            format!("{:?}", r.report.outcome).to_lowercase(),
            to_sql(r.report.dispensed.minor),
            r.json,
            r.applied
        ],
    )?;
    Ok(())
}

/// A dispense report as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    /// When received.
    pub received_at: u64,
    /// From which ATM.
    pub atm_id: String,
    /// The order it reports on.
    pub order_id: String,
    /// Its message id.
    pub jti: String,
    /// The device's verdict.
    pub outcome: String,
    /// Value reported exited.
    pub dispensed: u64,
    /// Whether it changed the transaction.
    pub applied: bool,
}

/// Every dispense report received for withdrawal `tx`, oldest first.
pub fn received_reports(db: Db<'_>, tx: &TxId) -> Result<Vec<ReportRow>, StoreError> {
    Ok(db.rows(
        "SELECT received_at, atm_id, jti, outcome, dispensed, applied, order_id
         FROM dispense_reports WHERE tx_id = ?1 ORDER BY id",
        [tx.to_string()],
        |r| {
            Ok(ReportRow {
                received_at: from_sql(r.get(0)?),
                atm_id: r.get(1)?,
                order_id: r.get(6)?,
                jti: r.get(2)?,
                outcome: r.get(3)?,
                dispensed: from_sql(r.get(4)?),
                applied: r.get(5)?,
            })
        },
    )?)
}
