//! The money invariants, checked against what the real pieces recorded: the hub's SQLite
//! (withdrawals, dispense reports, ledger), the agent's SQLite (orders, journal, outbox) and
//! the dispenser simulator's physical counters.
//!
//! One checker for every suite that needs it (the default fault-injection test, the long
//! campaign binary). It only reads; it never repairs. Each violation is one readable line
//! naming the transaction or order, so a failing seed says what went wrong, not just that
//! something did. The invariants are those of `docs/invariants.md`:
//!
//! 1. **No cash without a confirmed, signed order**: the value that physically left the
//!    machine lies between "captured + in-doubt known counts" and "captured + in-doubt held
//!    amounts" (equal when nothing is in doubt), and every order the agent journalled is one
//!    the hub issued, for that transaction, ATM and amount.
//! 2. **No order dispensed twice**: at most one write-ahead record and one device outcome
//!    per order in the agent's journal, and the machine's counters agree with the agent's
//!    reports.
//! 3. **Every dispense reaches the hub exactly once**: once the outbox drained, every order
//!    the agent finished has exactly one applied report at the hub, with matching effect, and
//!    the hub applied no report the agent never made.
//! 4. **Ledger conservation**: `admin::ledger_check` finds no problem.
//! 5. **Every transaction ends final or flagged**: outside the hub's unsettled list only
//!    final phases; inside it only in-doubt or flagged ones, or (before the final sweep)
//!    ones whose deadlines have not run out yet.
//! 6. **Settlements keep to the evidence**: every settled withdrawal with dispense reports
//!    settled an amount within the bounds those reports allow (`qrcash_hub::evidence`).
//!
//! The totals of 1 and 2 compare the machine's whole payout with the books; a discrepancy
//! found once would be found again after every later scenario. [`check_carried`] takes the
//! discrepancy already reported ([`Drift`]) and reports only what is new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use qrcash_hub::admin::{self, TxFilter};
use qrcash_hub::store::{Store as HubStore, settlement};
use qrcash_hub::withdrawal::Phase;
use qrcash_protocol::messages::{DispenseOrder, DispenseOutcome, DispenseReport};
use rusqlite::{Connection, OpenFlags};

/// What the hub recorded about one withdrawal.
#[derive(Debug, Clone)]
pub struct HubWithdrawal {
    /// Transaction id.
    pub tx_id: String,
    /// Life-cycle phase.
    pub phase: Phase,
    /// Requested amount (minor units).
    pub amount: u64,
    /// Captured value.
    pub settled: u64,
    /// The ATM it was presented at.
    pub atm_id: Option<String>,
    /// The dispense order issued, if any.
    pub order_id: Option<String>,
    /// Code expiry (Unix seconds).
    pub code_expires_at: u64,
    /// Confirmation deadline.
    pub confirm_by: Option<u64>,
    /// Order expiry.
    pub order_expires_at: Option<u64>,
    /// Flagged for operator reconciliation.
    pub flagged: bool,
    /// In the hub's unsettled list (`admin::unsettled`).
    pub unsettled: bool,
    /// The amount an operator settled it with, if resolved.
    pub resolved: Option<u64>,
    /// The bounds of what left the machine by its reports (`None` without reports).
    pub evidence: Option<(u64, u64)>,
}

/// A dispense report as the hub stored it.
#[derive(Debug, Clone)]
pub struct HubReport {
    /// The transaction.
    pub tx_id: String,
    /// The order.
    pub order_id: String,
    /// The device's verdict as stored (`dispensed`, `partial`, `failed`, `indoubt`).
    pub outcome: String,
    /// Value reported as exited.
    pub dispensed: u64,
    /// Whether it changed the transaction.
    pub applied: bool,
}

/// The hub's side.
#[derive(Debug, Clone, Default)]
pub struct HubView {
    /// Every withdrawal.
    pub withdrawals: Vec<HubWithdrawal>,
    /// Every dispense report received.
    pub reports: Vec<HubReport>,
    /// Problems `ledger_check` found.
    pub ledger_problems: Vec<String>,
    /// Postings examined by `ledger_check`.
    pub postings: u64,
}

/// One order in the agent's database.
#[derive(Debug, Clone)]
pub struct AgentOrder {
    /// The order as received and verified.
    pub order: DispenseOrder,
    /// `true` while journalled as dispensing without an outcome.
    pub unfinished: bool,
    /// The report, once finished.
    pub report: Option<DispenseReport>,
}

/// The agent's side.
#[derive(Debug, Clone, Default)]
pub struct AgentView {
    /// Every order it ever started.
    pub orders: Vec<AgentOrder>,
    /// Write-ahead (`dispense_started`) records per order id.
    pub started: BTreeMap<String, u32>,
    /// Device outcome records per order id.
    pub outcomes: BTreeMap<String, u32>,
    /// Messages other than heartbeats still waiting in the outbox, each as its kind,
    /// attempts and time queued.
    pub outbox_pending: Vec<String>,
    /// Dead letters (messages the hub refused permanently).
    pub dead_letters: u64,
}

/// The machine's physical counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineView {
    /// Value of every note that left the machine through the exit (minor units).
    pub delivered_value: u64,
    /// Number of such notes.
    pub delivered_notes: u64,
}

impl MachineView {
    /// From per-cassette delivered counts and the cassettes' denominations (same order).
    pub fn from_counts(delivered_per_cassette: &[u64], denominations: &[u64]) -> MachineView {
        MachineView {
            delivered_value: delivered_per_cassette
                .iter()
                .zip(denominations)
                .map(|(n, d)| n * d)
                .sum(),
            delivered_notes: delivered_per_cassette.iter().sum(),
        }
    }
}

/// How strict invariant 5 is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadlines {
    /// During a campaign: a transaction may still be open if its deadline (code expiry,
    /// confirmation, order expiry plus report grace) lies after `now`.
    OpenUntil {
        /// The hub's clock now.
        now: u64,
        /// The hub's report grace.
        report_grace: Duration,
    },
    /// After the final sweep with the hub's clock past every deadline: nothing may be open.
    AllPassed,
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// One line per violation; empty when every invariant held.
    pub violations: Vec<String>,
    /// Withdrawals examined.
    pub withdrawals: usize,
    /// Orders the agent started.
    pub orders: usize,
    /// Withdrawals in doubt.
    pub in_doubt: usize,
    /// Withdrawals still open within their deadlines.
    pub open: usize,
    /// Value that left the machine.
    pub delivered_value: u64,
    /// Value the hub captured.
    pub captured: u64,
    /// How far the machine's payout lies outside the books' bounds, counting the carried
    /// drift (what the next check should carry).
    pub drift: Drift,
}

/// Discrepancies of the totals (invariants 1 and 2) already reported: the machine's payout
/// less these is compared with the bounds, so one discrepancy is reported once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drift {
    /// Against the hub's books (invariant 1).
    pub hub: i128,
    /// Against the agent's orders (invariant 2).
    pub agent: i128,
}

/// How far `value` lies outside `low..=high` (negative below, positive above).
fn outside(value: i128, low: u64, high: u64) -> i128 {
    if value < i128::from(low) {
        value - i128::from(low)
    } else if value > i128::from(high) {
        value - i128::from(high)
    } else {
        0
    }
}

impl Verdict {
    /// Whether every invariant held.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Errors reading a store.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The hub's store.
    #[error("reading the hub's database: {0}")]
    Hub(String),
    /// The agent's store.
    #[error("reading the agent's database: {0}")]
    Agent(#[from] rusqlite::Error),
    /// A stored JSON document.
    #[error("decoding {what} stored by the agent: {detail}")]
    Json {
        /// What.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Reads the hub's SQLite database (while the hub runs: WAL lets readers in).
pub fn read_hub(path: &Path) -> Result<HubView, ReadError> {
    let store = HubStore::open(path).map_err(|e| ReadError::Hub(e.to_string()))?;
    read_hub_store(&store)
}

/// Reads the hub's database through its store, on either backend (on PostgreSQL, from a
/// thread that drives no async tasks: [`crate::postgres::blocking`]).
pub fn read_hub_store(store: &HubStore) -> Result<HubView, ReadError> {
    let err = |e: &dyn std::fmt::Display| ReadError::Hub(e.to_string());
    let unsettled: BTreeSet<String> = admin::unsettled(store)
        .map_err(|e| err(&e))?
        .into_iter()
        .map(|w| w.tx_id.to_string())
        .collect();
    let mut withdrawals = Vec::new();
    let mut reports = Vec::new();
    for w in admin::list_withdrawals(store, &TxFilter::default()).map_err(|e| err(&e))? {
        let tx = w.tx_id;
        let tx_id = tx.to_string();
        let mut evidence = None;
        if w.order_id.is_some() {
            let e = admin::withdrawal_evidence(store, &tx).map_err(|e| err(&e))?;
            evidence = (!e.reports.is_empty()).then_some((e.low, e.high));
            for r in settlement::received_reports(store.db(), &tx).map_err(|e| err(&e))? {
                reports.push(HubReport {
                    tx_id: tx_id.clone(),
                    order_id: r.order_id,
                    outcome: r.outcome,
                    dispensed: r.dispensed,
                    applied: r.applied,
                });
            }
        }
        withdrawals.push(HubWithdrawal {
            unsettled: unsettled.contains(&tx_id),
            resolved: admin::resolution_of(store, &tx)
                .map_err(|e| err(&e))?
                .map(|r| r.dispensed),
            tx_id,
            phase: w.phase,
            amount: w.amount.minor,
            settled: w.settled,
            atm_id: w.atm_id,
            order_id: w.order_id.map(|o| o.to_string()),
            code_expires_at: w.code_expires_at,
            confirm_by: w.confirm_by,
            order_expires_at: w.order_expires_at,
            flagged: w.needs_reconciliation,
            evidence,
        });
    }
    let ledger = admin::ledger_check(store).map_err(|e| err(&e))?;
    Ok(HubView {
        withdrawals,
        reports,
        ledger_problems: ledger.problems,
        postings: ledger.postings,
    })
}

/// Reads the agent's database, read-only (the agent may be running or killed).
pub fn read_agent(path: &Path) -> Result<AgentView, ReadError> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    db.busy_timeout(Duration::from_secs(10))?;
    let mut view = AgentView::default();
    {
        let mut stmt = db.prepare("SELECT state, order_json, report_json FROM orders")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (state, order, report) in rows {
            let json = |what, e: serde_json::Error| ReadError::Json {
                what,
                detail: e.to_string(),
            };
            view.orders.push(AgentOrder {
                order: serde_json::from_str(&order).map_err(|e| json("an order", e))?,
                unfinished: state == "dispensing",
                report: report
                    .map(|r| serde_json::from_str(&r).map_err(|e| json("a report", e)))
                    .transpose()?,
            });
        }
    }
    {
        let mut stmt = db.prepare(
            "SELECT kind, order_id, COUNT(*) FROM journal
             WHERE kind IN ('dispense_started', 'device_outcome') AND order_id IS NOT NULL
             GROUP BY kind, order_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (kind, order, n) in rows {
            let map = if kind == "dispense_started" {
                &mut view.started
            } else {
                &mut view.outcomes
            };
            map.insert(order, u32::try_from(n).unwrap_or(u32::MAX));
        }
    }
    view.outbox_pending = db
        .prepare(
            "SELECT kind, attempts, created_at FROM outbox WHERE kind <> 'Heartbeat' ORDER BY id",
        )?
        .query_map([], |r| {
            Ok(format!(
                "{} ({} attempts, queued at {})",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    view.dead_letters = db
        .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
            r.get::<_, i64>(0)
        })?
        .max(0) as u64;
    Ok(view)
}

/// The outcome as the hub stores it (`format!("{:?}").to_lowercase()`: `indoubt`).
fn outcome_name(o: DispenseOutcome) -> &'static str {
    match o {
        DispenseOutcome::Dispensed => "dispensed",
        DispenseOutcome::Partial => "partial",
        DispenseOutcome::Failed => "failed",
        DispenseOutcome::InDoubt => "indoubt",
    }
}

/// Checks the invariants. `drained`: the agent's outbox is expected to be empty (the
/// caller waited for it); with `false` invariant 3 only checks what has arrived.
pub fn check(
    hub: &HubView,
    agent: &AgentView,
    machine: MachineView,
    drained: bool,
    deadlines: Deadlines,
) -> Verdict {
    check_carried(hub, agent, machine, drained, deadlines, Drift::default())
}

/// [`check`], with the totals' discrepancies already reported carried over.
pub fn check_carried(
    hub: &HubView,
    agent: &AgentView,
    machine: MachineView,
    drained: bool,
    deadlines: Deadlines,
    carried: Drift,
) -> Verdict {
    let mut v = Verdict {
        withdrawals: hub.withdrawals.len(),
        orders: agent.orders.len(),
        delivered_value: machine.delivered_value,
        ..Verdict::default()
    };
    let mut bad = |s: String| v.violations.push(s);
    let by_order: BTreeMap<&str, &HubWithdrawal> = hub
        .withdrawals
        .iter()
        .filter_map(|w| w.order_id.as_deref().map(|o| (o, w)))
        .collect();
    let by_tx: BTreeMap<&str, &HubWithdrawal> = hub
        .withdrawals
        .iter()
        .map(|w| (w.tx_id.as_str(), w))
        .collect();

    // 1. Cash only against the hub's own orders, and the physical total within the books.
    let captured: u64 = hub.withdrawals.iter().map(|w| w.settled).sum();
    let mut low = captured;
    let mut high = captured;
    let mut in_doubt = 0;
    for w in &hub.withdrawals {
        if w.phase == Phase::InDoubt {
            in_doubt += 1;
            let known = hub
                .reports
                .iter()
                .filter(|r| r.tx_id == w.tx_id)
                .map(|r| r.dispensed)
                .max()
                .unwrap_or(0);
            low += known;
            high += w.amount;
        } else if w.phase == Phase::Ordered {
            // An order whose outcome has not reached the hub: anything up to the amount.
            high += w.amount;
        }
    }
    let paid = i128::from(machine.delivered_value);
    let hub_drift = outside(paid - carried.hub, low, high);
    if hub_drift != 0 {
        bad(format!(
            "[1] the machine paid out {} but the hub accounts for {low}..={high} (captured {captured}, {in_doubt} in doubt){}",
            machine.delivered_value,
            if carried.hub != 0 {
                format!(" beyond the {} reported before", carried.hub)
            } else {
                String::new()
            }
        ));
    }
    for o in &agent.orders {
        let id = o.order.order_id.to_string();
        match by_order.get(id.as_str()) {
            None => bad(format!(
                "[1] the agent journalled order {id} (tx {}) that the hub never issued",
                o.order.tx_id
            )),
            Some(w) => {
                if w.tx_id != o.order.tx_id.to_string()
                    || w.amount != o.order.amount.minor
                    || w.atm_id.as_deref() != Some(o.order.atm_id.as_str())
                {
                    bad(format!(
                        "[1] order {id}: the agent's copy (tx {}, {} at {}) differs from the hub's (tx {}, {} at {:?})",
                        o.order.tx_id,
                        o.order.amount.minor,
                        o.order.atm_id,
                        w.tx_id,
                        w.amount,
                        w.atm_id
                    ));
                }
                if matches!(w.phase, Phase::Registered | Phase::Presented) {
                    bad(format!(
                        "[1] order {id} started at the ATM while the hub has tx {} only {}",
                        w.tx_id, w.phase
                    ));
                }
            }
        }
    }

    // 2. At most one dispense per order; the machine agrees with the agent's reports.
    for (order, n) in &agent.started {
        if *n > 1 {
            bad(format!("[2] order {order} was started {n} times"));
        }
    }
    for (order, n) in &agent.outcomes {
        if *n > 1 {
            bad(format!("[2] order {order} has {n} device outcomes"));
        }
    }
    let mut agent_low = 0;
    let mut agent_high = 0;
    for o in &agent.orders {
        let id = o.order.order_id.to_string();
        if agent.started.get(&id).copied().unwrap_or(0) != 1 {
            bad(format!("[2] order {id} has no single write-ahead record"));
        }
        match &o.report {
            Some(r) => {
                if r.dispensed.minor > o.order.amount.minor {
                    bad(format!(
                        "[2] order {id} reports {} paid out of {}",
                        r.dispensed.minor, o.order.amount.minor
                    ));
                }
                agent_low += r.dispensed.minor;
                agent_high += if r.outcome == DispenseOutcome::InDoubt {
                    o.order.amount.minor
                } else {
                    r.dispensed.minor
                };
            }
            None => agent_high += o.order.amount.minor,
        }
    }
    let agent_drift = outside(paid - carried.agent, agent_low, agent_high);
    if agent_drift != 0 {
        bad(format!(
            "[2] the machine paid out {} but the agent's orders account for {agent_low}..={agent_high}{}",
            machine.delivered_value,
            if carried.agent != 0 {
                format!(" beyond the {} reported before", carried.agent)
            } else {
                String::new()
            }
        ));
    }

    // 3. Every finished dispense reaches the hub exactly once, with its effect.
    let mut applied: BTreeMap<&str, Vec<&HubReport>> = BTreeMap::new();
    for r in hub.reports.iter().filter(|r| r.applied) {
        applied.entry(r.order_id.as_str()).or_default().push(r);
    }
    let agent_orders: BTreeSet<String> = agent
        .orders
        .iter()
        .map(|o| o.order.order_id.to_string())
        .collect();
    for (order, reports) in &applied {
        if reports.len() > 1 {
            bad(format!(
                "[3] order {order}: {} reports applied at the hub",
                reports.len()
            ));
        }
        if !agent_orders.contains(*order) {
            bad(format!(
                "[3] the hub applied a report for order {order} that the agent never started"
            ));
        }
    }
    if drained && !agent.outbox_pending.is_empty() {
        bad(format!(
            "[3] {} messages still in the agent's outbox: {}",
            agent.outbox_pending.len(),
            agent.outbox_pending.join(", ")
        ));
    }
    if agent.dead_letters > 0 {
        bad(format!(
            "[3] {} messages dead-lettered by the agent (the hub refused them permanently)",
            agent.dead_letters
        ));
    }
    for o in &agent.orders {
        let id = o.order.order_id.to_string();
        if o.unfinished {
            if drained {
                bad(format!(
                    "[3] order {id} is still dispensing in the agent's journal"
                ));
            }
            continue;
        }
        let Some(report) = &o.report else { continue };
        match applied.get(id.as_str()).map(Vec::as_slice) {
            Some([r]) => {
                if r.outcome != outcome_name(report.outcome)
                    || r.dispensed != report.dispensed.minor
                {
                    bad(format!(
                        "[3] order {id}: the hub applied {} {} but the agent reported {} {}",
                        r.outcome,
                        r.dispensed,
                        outcome_name(report.outcome),
                        report.dispensed.minor
                    ));
                }
                if let Some(w) = by_order.get(id.as_str()) {
                    let expected = match report.outcome {
                        DispenseOutcome::Dispensed => {
                            Some((Phase::Dispensed, report.dispensed.minor))
                        }
                        DispenseOutcome::Partial => Some((Phase::Partial, report.dispensed.minor)),
                        DispenseOutcome::Failed => Some((Phase::Failed, 0)),
                        // In doubt until an operator settles it within the evidence.
                        DispenseOutcome::InDoubt => match w.resolved {
                            Some(v) => Some((w.phase, v)),
                            None => Some((Phase::InDoubt, 0)),
                        },
                    };
                    if let Some((phase, settled)) = expected
                        && (w.phase != phase || w.settled != settled)
                    {
                        bad(format!(
                            "[3] tx {}: the hub has {} settled {} after a {} report of {}",
                            w.tx_id,
                            w.phase,
                            w.settled,
                            outcome_name(report.outcome),
                            report.dispensed.minor
                        ));
                    }
                }
            }
            Some(_) => {}
            None if drained => bad(format!(
                "[3] order {id}: the agent's {} report never reached the hub",
                outcome_name(report.outcome)
            )),
            None => {}
        }
    }

    // 4. The books balance.
    for p in &hub.ledger_problems {
        bad(format!("[4] ledger: {p}"));
    }

    // 5. Final, or in the unsettled list as in doubt / flagged / still within its deadline.
    let mut open = 0;
    for w in &hub.withdrawals {
        if w.phase.is_final() {
            if w.unsettled && !w.flagged {
                bad(format!(
                    "[5] tx {} is {} yet listed unsettled",
                    w.tx_id, w.phase
                ));
            }
            continue;
        }
        if !w.unsettled {
            bad(format!(
                "[5] tx {} is {} but missing from the unsettled list",
                w.tx_id, w.phase
            ));
        }
        if w.phase == Phase::InDoubt || w.flagged {
            continue;
        }
        let still_open = match deadlines {
            Deadlines::AllPassed => false,
            Deadlines::OpenUntil { now, report_grace } => match w.phase {
                Phase::Registered => w.code_expires_at >= now,
                Phase::Presented => w.confirm_by.is_none_or(|c| c >= now),
                Phase::Ordered => w
                    .order_expires_at
                    .is_none_or(|e| e + report_grace.as_secs() >= now),
                _ => false,
            },
        };
        if still_open {
            open += 1;
        } else {
            bad(format!(
                "[5] tx {} is still {} past its deadline and not flagged",
                w.tx_id, w.phase
            ));
        }
    }
    // 6. Settlements within the evidence.
    for w in &hub.withdrawals {
        if let (true, Some((low, high))) = (
            matches!(w.phase, Phase::Dispensed | Phase::Partial | Phase::Failed),
            w.evidence,
        ) && !(low..=high).contains(&w.settled)
            && !w.flagged
        {
            bad(format!(
                "[6] tx {} settled {} outside its reports' bounds {low}..={high}{}",
                w.tx_id,
                w.settled,
                match w.resolved {
                    Some(_) => " (resolved by an operator)",
                    None => "",
                }
            ));
        }
    }

    let _ = by_tx;
    v.drift = Drift {
        hub: carried.hub + hub_drift,
        agent: carried.agent + agent_drift,
    };
    v.in_doubt = in_doubt;
    v.open = open;
    v.captured = captured;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::messages::{NoteCount, NoteOutcome};
    use qrcash_protocol::{Amount, Currency, OrderId, TxId};

    fn order(amount: u64) -> DispenseOrder {
        DispenseOrder {
            order_id: OrderId::random(),
            tx_id: TxId::random(),
            atm_id: "atm".into(),
            amount: Amount::new(amount, Currency::JPY),
            notes: vec![NoteCount {
                denomination: 1_000,
                count: u32::try_from(amount / 1_000).unwrap_or(0),
            }],
            expires_at: 0,
        }
    }

    fn report(o: &DispenseOrder, outcome: DispenseOutcome, paid: u64) -> DispenseReport {
        DispenseReport {
            order_id: o.order_id,
            tx_id: o.tx_id,
            notes: vec![NoteOutcome {
                denomination: 1_000,
                requested: o.notes[0].count,
                picked: u32::try_from(paid / 1_000).unwrap_or(0),
                exited: u32::try_from(paid / 1_000).unwrap_or(0),
                rejected: 0,
            }],
            dispensed: Amount::new(paid, Currency::JPY),
            outcome,
            device_error: None,
            max_dispensed: None,
            source: None,
        }
    }

    /// A consistent world: one dispensed withdrawal of `amount`.
    fn world(amount: u64) -> (HubView, AgentView, MachineView) {
        let o = order(amount);
        let r = report(&o, DispenseOutcome::Dispensed, amount);
        let id = o.order_id.to_string();
        let hub = HubView {
            withdrawals: vec![HubWithdrawal {
                tx_id: o.tx_id.to_string(),
                phase: Phase::Dispensed,
                amount,
                settled: amount,
                atm_id: Some("atm".into()),
                order_id: Some(id.clone()),
                code_expires_at: 0,
                confirm_by: Some(0),
                order_expires_at: Some(0),
                flagged: false,
                unsettled: false,
                resolved: None,
                evidence: Some((amount, amount)),
            }],
            reports: vec![HubReport {
                tx_id: o.tx_id.to_string(),
                order_id: id.clone(),
                outcome: "dispensed".into(),
                dispensed: amount,
                applied: true,
            }],
            ledger_problems: vec![],
            postings: 2,
        };
        let agent = AgentView {
            orders: vec![AgentOrder {
                order: o,
                unfinished: false,
                report: Some(r),
            }],
            started: [(id.clone(), 1)].into(),
            outcomes: [(id, 1)].into(),
            outbox_pending: Vec::new(),
            dead_letters: 0,
        };
        let machine = MachineView::from_counts(&[0, amount / 1_000], &[10_000, 1_000]);
        (hub, agent, machine)
    }

    fn verdict(hub: &HubView, agent: &AgentView, m: MachineView) -> Verdict {
        check(hub, agent, m, true, Deadlines::AllPassed)
    }

    #[test]
    fn a_consistent_world_passes() {
        let (hub, agent, m) = world(12_000);
        let v = verdict(&hub, &agent, m);
        assert!(v.is_ok(), "{:?}", v.violations);
        assert_eq!(v.delivered_value, 12_000);
        assert_eq!(v.captured, 12_000);
    }

    #[test]
    fn cash_beyond_the_books_is_caught() {
        let (hub, agent, _) = world(12_000);
        let m = MachineView::from_counts(&[0, 13], &[10_000, 1_000]);
        let v = verdict(&hub, &agent, m);
        assert!(v.violations.iter().any(|s| s.starts_with("[1]")), "{v:?}");
        assert!(v.violations.iter().any(|s| s.starts_with("[2]")), "{v:?}");
    }

    #[test]
    fn a_discrepancy_of_the_totals_is_reported_once_then_carried() {
        let (hub, agent, _) = world(12_000);
        let m = MachineView::from_counts(&[0, 13], &[10_000, 1_000]);
        let first = verdict(&hub, &agent, m);
        assert_eq!(
            first.drift,
            Drift {
                hub: 1_000,
                agent: 1_000
            }
        );
        // The next scenario changes nothing: the same discrepancy is not reported again.
        let again = check_carried(&hub, &agent, m, true, Deadlines::AllPassed, first.drift);
        assert!(again.is_ok(), "{:?}", again.violations);
        assert_eq!(again.drift, first.drift);
        // A new one is: 1,000 yen more left the machine with nothing in the books.
        let m = MachineView::from_counts(&[0, 14], &[10_000, 1_000]);
        let more = check_carried(&hub, &agent, m, true, Deadlines::AllPassed, first.drift);
        assert!(
            more.violations.iter().any(|s| s.starts_with("[1]")),
            "{more:?}"
        );
        assert_eq!(more.drift.hub, 2_000);
    }

    #[test]
    fn a_settlement_outside_its_evidence_is_caught() {
        let (mut hub, agent, m) = world(12_000);
        hub.withdrawals[0].evidence = Some((0, 5_000));
        hub.withdrawals[0].resolved = Some(12_000);
        let v = verdict(&hub, &agent, m);
        assert!(v.violations.iter().any(|s| s.starts_with("[6]")), "{v:?}");
    }

    #[test]
    fn an_order_the_hub_never_issued_is_caught() {
        let (hub, mut agent, m) = world(12_000);
        let mut forged = agent.orders[0].clone();
        forged.order.order_id = OrderId::random();
        agent.started.insert(forged.order.order_id.to_string(), 1);
        agent.orders.push(forged);
        let v = verdict(&hub, &agent, m);
        assert!(
            v.violations.iter().any(|s| s.contains("never issued")),
            "{v:?}"
        );
    }

    #[test]
    fn a_second_dispense_or_report_is_caught() {
        let (mut hub, mut agent, m) = world(12_000);
        let id = agent.orders[0].order.order_id.to_string();
        agent.started.insert(id, 2);
        hub.reports.push(hub.reports[0].clone());
        let v = verdict(&hub, &agent, m);
        assert!(
            v.violations.iter().any(|s| s.contains("started 2 times")),
            "{v:?}"
        );
        assert!(
            v.violations.iter().any(|s| s.contains("2 reports applied")),
            "{v:?}"
        );
    }

    #[test]
    fn a_lost_report_and_an_undrained_outbox_are_caught() {
        let (mut hub, mut agent, m) = world(12_000);
        hub.reports.clear();
        hub.withdrawals[0].phase = Phase::Ordered;
        hub.withdrawals[0].settled = 0;
        hub.withdrawals[0].unsettled = true;
        agent.outbox_pending = vec!["DispenseReport (1 attempts, queued at 0)".into()];
        let v = verdict(&hub, &agent, m);
        assert!(
            v.violations.iter().any(|s| s.contains("never reached")),
            "{v:?}"
        );
        assert!(v.violations.iter().any(|s| s.contains("outbox")), "{v:?}");
        assert!(v.violations.iter().any(|s| s.starts_with("[5]")), "{v:?}");
        // Before the outbox drained and within the deadlines, the same world is acceptable.
        let v = check(
            &hub,
            &agent,
            m,
            false,
            Deadlines::OpenUntil {
                now: 0,
                report_grace: Duration::from_secs(1),
            },
        );
        assert!(v.is_ok(), "{:?}", v.violations);
        assert_eq!(v.open, 1);
    }

    #[test]
    fn in_doubt_brackets_the_physical_total() {
        let (mut hub, mut agent, _) = world(12_000);
        hub.withdrawals[0].phase = Phase::InDoubt;
        hub.withdrawals[0].settled = 0;
        hub.withdrawals[0].unsettled = true;
        hub.reports[0].outcome = "indoubt".into();
        hub.reports[0].dispensed = 2_000;
        let o = agent.orders[0].order.clone();
        agent.orders[0].report = Some(report(&o, DispenseOutcome::InDoubt, 2_000));
        for paid in [2_000, 7_000, 12_000] {
            let m = MachineView::from_counts(&[0, paid / 1_000], &[10_000, 1_000]);
            let v = verdict(&hub, &agent, m);
            assert!(v.is_ok(), "{paid}: {:?}", v.violations);
            assert_eq!(v.in_doubt, 1);
        }
        for paid in [1_000, 13_000] {
            let m = MachineView::from_counts(&[0, paid / 1_000], &[10_000, 1_000]);
            assert!(!verdict(&hub, &agent, m).is_ok(), "{paid}");
        }
    }

    #[test]
    fn unbalanced_books_are_caught() {
        let (mut hub, agent, m) = world(12_000);
        hub.ledger_problems.push("JPY sums to 1".into());
        let v = verdict(&hub, &agent, m);
        assert_eq!(v.violations, vec!["[4] ledger: JPY sums to 1".to_string()]);
    }
}
