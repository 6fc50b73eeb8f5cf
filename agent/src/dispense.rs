//! The dispense sequence of one order as a pure state machine, plus the pure mappings
//! around it: order notes to cassette counts, device outcome to the hub's report.
//!
//! ```text
//! Accepted --write-ahead committed--> Journalled --first byte sent--> Dispensing
//!          --device answered--> Outcome --outcome + report committed--> Reported
//! ```
//!
//! The session (`session`) owns one sequence per order: it asks [`DispenseSequence::next`]
//! what to do, turns the answer into an action for the shell and reports the shell's result
//! back with [`DispenseSequence::on`]; a step out of order is refused, so "dispense before
//! the write-ahead record is on disk" cannot be expressed. Money rule: an outcome is reported
//! as the device counted it; a device that cannot tell yields `InDoubt`, never a guess.

use qrcash_hardware::dispenser::{
    DispenseOutcome as DeviceOutcome, DispenseRequest, DispenseResult, Recovery,
};
use qrcash_protocol::Amount;
use qrcash_protocol::messages::CountSource;
use qrcash_protocol::messages::{
    DispenseOrder, DispenseOutcome, DispenseReport, NoteCount, NoteOutcome,
};

/// Where one order's dispense stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Verified and accepted; nothing written yet.
    Accepted,
    /// The write-ahead record ("dispensing") is committed.
    Journalled,
    /// Handed to the dispenser.
    Dispensing,
    /// The device answered; the report is built but not yet committed.
    Outcome(DispenseReport),
    /// Outcome and report are committed; the report is in the outbox.
    Reported,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Commit the write-ahead record (`Store::begin_dispense`).
    WriteAhead,
    /// Run the dispenser with this request.
    RunDevice(DispenseRequest),
    /// Commit the outcome and queue this report (`Store::finish_dispense`).
    Record(DispenseReport),
    /// Nothing: the sequence is complete.
    Done,
}

/// What happened in the shell.
#[derive(Debug, Clone)]
pub enum Happened {
    /// The write-ahead record is on disk.
    WriteAheadCommitted,
    /// The request went to the device.
    DeviceStarted,
    /// The device answered (or the driver promised nothing moved: `Err`).
    DeviceFinished(Result<DeviceOutcome, String>),
    /// Outcome and report are committed.
    Recorded,
}

/// A step out of order: a bug in the shell, refused rather than executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dispense sequence: {event} is not allowed in step {step}")]
pub struct OutOfOrder {
    /// The step the sequence was in.
    pub step: &'static str,
    /// The event that arrived.
    pub event: &'static str,
}

/// One order's dispense sequence.
#[derive(Debug, Clone)]
pub struct DispenseSequence {
    order: DispenseOrder,
    request: DispenseRequest,
    cassettes: Vec<u64>,
    step: Step,
}

impl DispenseSequence {
    /// Starts the sequence for an accepted order; `request` is its cassette mapping and
    /// `cassettes` the denomination of each cassette position.
    pub fn new(order: DispenseOrder, request: DispenseRequest, cassettes: Vec<u64>) -> Self {
        DispenseSequence {
            order,
            request,
            cassettes,
            step: Step::Accepted,
        }
    }

    /// The order.
    pub fn order(&self) -> &DispenseOrder {
        &self.order
    }

    /// The current step.
    pub fn step(&self) -> &Step {
        &self.step
    }

    /// What the shell must do now.
    pub fn next(&self) -> Next {
        match &self.step {
            Step::Accepted => Next::WriteAhead,
            Step::Journalled => Next::RunDevice(self.request.clone()),
            // The device call is running; the shell is waiting for it.
            Step::Dispensing => Next::Done,
            Step::Outcome(report) => Next::Record(report.clone()),
            Step::Reported => Next::Done,
        }
    }

    /// Advances on what happened; refuses anything out of order.
    pub fn on(&mut self, event: Happened) -> Result<(), OutOfOrder> {
        let next = match (&self.step, event) {
            (Step::Accepted, Happened::WriteAheadCommitted) => Step::Journalled,
            (Step::Journalled, Happened::DeviceStarted) => Step::Dispensing,
            (Step::Dispensing, Happened::DeviceFinished(result)) => Step::Outcome(report_for(
                &self.order,
                &self.cassettes,
                result.as_ref().map_err(String::as_str),
            )),
            (Step::Outcome(_), Happened::Recorded) => Step::Reported,
            (step, event) => {
                return Err(OutOfOrder {
                    step: step_name(step),
                    event: event_name(&event),
                });
            }
        };
        self.step = next;
        Ok(())
    }
}

fn step_name(s: &Step) -> &'static str {
    match s {
        Step::Accepted => "accepted",
        Step::Journalled => "journalled",
        Step::Dispensing => "dispensing",
        Step::Outcome(_) => "outcome",
        Step::Reported => "reported",
    }
}

fn event_name(e: &Happened) -> &'static str {
    match e {
        Happened::WriteAheadCommitted => "write-ahead committed",
        Happened::DeviceStarted => "device started",
        Happened::DeviceFinished(_) => "device finished",
        Happened::Recorded => "recorded",
    }
}

/// Maps the order's notes onto cassette positions (`cassettes[i]` is the denomination of
/// cassette `i + 1`). Refuses denominations this ATM does not carry and empty orders.
pub fn request_for(order: &DispenseOrder, cassettes: &[u64]) -> Result<DispenseRequest, String> {
    let mut counts = vec![0u32; cassettes.len()];
    for NoteCount {
        denomination,
        count,
    } in &order.notes
    {
        if *count == 0 {
            continue;
        }
        let slot = cassettes
            .iter()
            .position(|d| d == denomination)
            .ok_or_else(|| format!("this ATM carries no {denomination} notes"))?;
        counts[slot] = counts[slot]
            .checked_add(*count)
            .ok_or_else(|| "note count overflow".to_owned())?;
    }
    let request = DispenseRequest::from_counts(counts);
    if request.is_empty() {
        return Err("the order asks for no notes".into());
    }
    Ok(request)
}

/// Per-denomination counts from the device tallies (cassettes of equal denomination add up).
fn note_outcomes(
    order: &DispenseOrder,
    cassettes: &[u64],
    device: Option<&DeviceOutcome>,
) -> Vec<NoteOutcome> {
    let mut out: Vec<NoteOutcome> = Vec::new();
    fn entry(out: &mut Vec<NoteOutcome>, denomination: u64) -> &mut NoteOutcome {
        let i = match out.iter().position(|n| n.denomination == denomination) {
            Some(i) => i,
            None => {
                out.push(NoteOutcome {
                    denomination,
                    requested: 0,
                    picked: 0,
                    exited: 0,
                    rejected: 0,
                });
                out.len() - 1
            }
        };
        &mut out[i]
    }
    for n in &order.notes {
        let e = entry(&mut out, n.denomination);
        e.requested = e.requested.saturating_add(n.count);
    }
    if let Some(device) = device {
        for t in &device.cassettes {
            let Some(&denomination) = t.cassette.index().and_then(|i| cassettes.get(i)) else {
                continue;
            };
            if t.picked == 0 && t.exited == 0 && t.rejected == 0 {
                continue;
            }
            let e = entry(&mut out, denomination);
            e.picked = e.picked.saturating_add(t.picked);
            e.exited = e.exited.saturating_add(t.exited);
            e.rejected = e.rejected.saturating_add(t.rejected);
        }
    }
    out
}

fn value_of(notes: &[NoteOutcome], order: &DispenseOrder) -> Amount {
    let minor = notes
        .iter()
        .map(|n| n.denomination.saturating_mul(u64::from(n.exited)))
        .fold(0u64, u64::saturating_add);
    Amount::new(minor, order.amount.currency)
}

/// The most that may have left the machine: the known value plus, when in doubt, every note
/// of the batch in flight; never above the order's amount.
fn max_value(
    order: &DispenseOrder,
    cassettes: &[u64],
    known: Amount,
    device: &DeviceOutcome,
) -> Amount {
    let in_flight = match &device.result {
        DispenseResult::InDoubt { in_flight, .. } => in_flight
            .notes
            .iter()
            .zip(cassettes)
            .map(|(n, d)| d.saturating_mul(u64::from(*n)))
            .fold(0u64, u64::saturating_add),
        _ => 0,
    };
    Amount::new(
        known
            .minor
            .saturating_add(in_flight)
            .min(order.amount.minor),
        order.amount.currency,
    )
}

/// The report for an order from the device's answer. `Err` is the driver's promise that no
/// note moved (the text is its error).
pub fn report_for(
    order: &DispenseOrder,
    cassettes: &[u64],
    device: Result<&DeviceOutcome, &str>,
) -> DispenseReport {
    let notes = note_outcomes(order, cassettes, device.ok());
    let dispensed = value_of(&notes, order);
    let max_dispensed = device
        .ok()
        .filter(|d| d.is_in_doubt())
        .map(|d| max_value(order, cassettes, dispensed, d));
    let (outcome, device_error) = match device {
        Err(e) => (DispenseOutcome::Failed, Some(e.to_owned())),
        Ok(d) => match &d.result {
            DispenseResult::InDoubt { in_flight, reason } => (
                DispenseOutcome::InDoubt,
                Some(format!(
                    "outcome unknown for {} notes in flight: {reason:?}",
                    in_flight.total()
                )),
            ),
            result => {
                let error = match result {
                    DispenseResult::Stopped { reason } => Some(format!("{reason:?}")),
                    _ => None,
                };
                let outcome = if dispensed.minor == order.amount.minor {
                    DispenseOutcome::Dispensed
                } else if dispensed.minor == 0 {
                    DispenseOutcome::Failed
                } else if dispensed.minor < order.amount.minor {
                    DispenseOutcome::Partial
                } else {
                    // More left the machine than ordered: the counts cannot be trusted.
                    DispenseOutcome::InDoubt
                };
                (outcome, error)
            }
        },
    };
    DispenseReport {
        order_id: order.order_id,
        tx_id: order.tx_id,
        notes,
        dispensed,
        outcome,
        device_error,
        // For a live dispense the counts are the device's answers (the default).
        max_dispensed: match outcome {
            DispenseOutcome::InDoubt => max_dispensed.or(Some(order.amount)),
            _ => None,
        },
        source: None,
    }
}

/// The report for an order found "dispensing" without an outcome after a restart: always
/// `InDoubt`. Counts are attributed by identity only: the driver's record must name this
/// order (its id is the reference the agent dispensed under). When it names another order,
/// or cannot be read, nothing is known to have left the machine and the upper bound is the
/// whole amount; the report says where its figures come from either way.
pub fn recovered_report(
    order: &DispenseOrder,
    cassettes: &[u64],
    recovery: Result<&Recovery, &str>,
) -> DispenseReport {
    let reference = order.order_id.to_string();
    let (device, source, detail) = match recovery {
        Ok(r) => {
            let last = r.last_for(&reference);
            let source = match last {
                Some(_) if r.late_answer => CountSource::LateAnswer,
                Some(_) => CountSource::DriverRecord,
                None => CountSource::NoRecord,
            };
            let detail = format!(
                "agent restarted while dispensing; {}; purged {}; machine clear {}",
                match (last, &r.last_reference) {
                    (Some(l), _) if r.late_answer => format!(
                        "device answered the batch in flight after the restart: {:?}",
                        l.result
                    ),
                    (Some(l), _) => format!("driver record of this order: {:?}", l.result),
                    (None, Some(other)) => format!(
                        "the driver's last record is of {other}, not this order: no note of it known to have left"
                    ),
                    (None, None) =>
                        "no driver record names this order: no note of it known to have left".into(),
                },
                r.purged,
                r.machine_clear()
            );
            (last, source, detail)
        }
        Err(e) => (
            None,
            CountSource::NoRecord,
            format!("agent restarted while dispensing; recovery failed: {e}"),
        ),
    };
    let notes = note_outcomes(order, cassettes, device);
    let dispensed = value_of(&notes, order);
    let max_dispensed = match device {
        Some(d) => max_value(order, cassettes, dispensed, d),
        None => order.amount,
    };
    DispenseReport {
        order_id: order.order_id,
        tx_id: order.tx_id,
        dispensed,
        notes,
        outcome: DispenseOutcome::InDoubt,
        device_error: Some(detail),
        max_dispensed: Some(max_dispensed),
        source: Some(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_hardware::dispenser::{
        CassetteId, CassetteState, CassetteTally, DispenserStatus, InDoubtReason, StopReason,
    };
    use qrcash_protocol::{Currency, OrderId, TxId};

    const CASSETTES: [u64; 2] = [10_000, 1_000];

    fn order(notes: &[(u64, u32)]) -> DispenseOrder {
        let amount = notes.iter().map(|(d, c)| d * u64::from(*c)).sum();
        DispenseOrder {
            order_id: OrderId([1; 16]),
            tx_id: TxId([2; 16]),
            atm_id: "atm-1".into(),
            amount: Amount::new(amount, Currency::JPY),
            notes: notes
                .iter()
                .map(|&(denomination, count)| NoteCount {
                    denomination,
                    count,
                })
                .collect(),
            expires_at: 0,
        }
    }

    fn tally(c: u8, requested: u32, exited: u32) -> CassetteTally {
        CassetteTally {
            picked: exited,
            exited,
            rejected: 0,
            state: CassetteState::Normal,
            ..CassetteTally::new(CassetteId(c), requested)
        }
    }

    fn device(result: DispenseResult, tallies: Vec<CassetteTally>) -> DeviceOutcome {
        DeviceOutcome {
            requested: DispenseRequest::upper_lower(2, 3),
            cassettes: tallies,
            result,
        }
    }

    #[test]
    fn sequence_runs_in_order_and_refuses_shortcuts() {
        let o = order(&[(10_000, 2), (1_000, 3)]);
        let req = request_for(&o, &CASSETTES).unwrap();
        let mut s = DispenseSequence::new(o.clone(), req.clone(), CASSETTES.to_vec());
        assert_eq!(s.next(), Next::WriteAhead);
        // The device may not run before the write-ahead record is committed.
        assert!(s.on(Happened::DeviceStarted).is_err());
        assert!(s.on(Happened::DeviceFinished(Err("x".into()))).is_err());
        s.on(Happened::WriteAheadCommitted).unwrap();
        assert_eq!(s.next(), Next::RunDevice(req));
        s.on(Happened::DeviceStarted).unwrap();
        assert_eq!(s.next(), Next::Done);
        let d = device(
            DispenseResult::Completed,
            vec![tally(1, 2, 2), tally(2, 3, 3)],
        );
        s.on(Happened::DeviceFinished(Ok(d))).unwrap();
        let Next::Record(report) = s.next() else {
            panic!("expected Record")
        };
        assert_eq!(report.outcome, DispenseOutcome::Dispensed);
        assert_eq!(report.dispensed, o.amount);
        assert!(s.on(Happened::WriteAheadCommitted).is_err());
        s.on(Happened::Recorded).unwrap();
        assert_eq!(s.next(), Next::Done);
        assert_eq!(s.step(), &Step::Reported);
    }

    #[test]
    fn notes_map_to_cassettes_and_foreign_denominations_are_refused() {
        let r = request_for(&order(&[(1_000, 3), (10_000, 1)]), &CASSETTES).unwrap();
        assert_eq!(r, DispenseRequest::upper_lower(1, 3));
        assert!(request_for(&order(&[(5_000, 1)]), &CASSETTES).is_err());
        assert!(request_for(&order(&[(10_000, 0)]), &CASSETTES).is_err());
    }

    #[test]
    fn outcomes_follow_the_counts() {
        let o = order(&[(10_000, 2), (1_000, 3)]);
        let stopped = |exited_upper, exited_lower| {
            device(
                DispenseResult::Stopped {
                    reason: StopReason::CommandRejected { sends: 3 },
                },
                vec![tally(1, 2, exited_upper), tally(2, 3, exited_lower)],
            )
        };
        let partial = report_for(&o, &CASSETTES, Ok(&stopped(2, 1)));
        assert_eq!(partial.outcome, DispenseOutcome::Partial);
        assert_eq!(partial.dispensed.minor, 21_000);
        assert_eq!(partial.notes[1].exited, 1);
        assert!(partial.device_error.is_some());
        assert_eq!(
            report_for(&o, &CASSETTES, Ok(&stopped(0, 0))).outcome,
            DispenseOutcome::Failed
        );
        let doubt = device(
            DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper_lower(0, 3),
                reason: InDoubtReason::NoResponse { acknowledged: true },
            },
            vec![tally(1, 2, 2), tally(2, 3, 0)],
        );
        let r = report_for(&o, &CASSETTES, Ok(&doubt));
        assert_eq!(r.outcome, DispenseOutcome::InDoubt);
        assert_eq!(r.dispensed.minor, 20_000, "known counts only");
        let failed = report_for(&o, &CASSETTES, Err("port gone"));
        assert_eq!(failed.outcome, DispenseOutcome::Failed);
        assert_eq!(failed.dispensed.minor, 0);
        assert_eq!(failed.notes[0].requested, 2);
    }

    #[test]
    fn recovery_is_always_in_doubt_and_attributes_counts_by_order_identity_only() {
        let o = order(&[(10_000, 2), (1_000, 3)]);
        let status = DispenserStatus {
            cassettes: vec![],
            error: None,
            notes_in_path: false,
            reject_tray_present: true,
            sensors: Default::default(),
        };
        let rec = |last: Option<DeviceOutcome>, reference: &str, late_answer| Recovery {
            last,
            last_reference: Some(reference.to_owned()),
            handed_at_ms: None,
            late_answer,
            status_before: status.clone(),
            purged: true,
            purge_error: None,
            status_after: status.clone(),
        };
        let this = o.order_id.to_string();
        // The driver's record of this very order: counts are known, the outcome is still
        // reported as in doubt (never as success by inference).
        let done = device(
            DispenseResult::Completed,
            vec![tally(1, 2, 2), tally(2, 3, 3)],
        );
        let r = recovered_report(&o, &CASSETTES, Ok(&rec(Some(done.clone()), &this, false)));
        assert_eq!(r.outcome, DispenseOutcome::InDoubt);
        assert_eq!(r.dispensed.minor, 23_000);
        assert_eq!(r.max_dispensed.map(|m| m.minor), Some(23_000));
        assert_eq!(r.source, Some(CountSource::DriverRecord));
        let r = recovered_report(&o, &CASSETTES, Ok(&rec(Some(done.clone()), &this, true)));
        assert_eq!(r.source, Some(CountSource::LateAnswer));

        // The regression: the driver's last record is of the previous order, which asked for
        // exactly the same notes. Nothing of it is attributed to this one.
        let r = recovered_report(&o, &CASSETTES, Ok(&rec(Some(done), "another-order", false)));
        assert_eq!(
            (r.outcome, r.dispensed.minor, r.source),
            (DispenseOutcome::InDoubt, 0, Some(CountSource::NoRecord))
        );
        assert_eq!(
            r.max_dispensed,
            Some(o.amount),
            "the whole amount as the upper bound"
        );
        assert!(r.notes.iter().all(|n| n.exited == 0 && n.picked == 0));
        assert!(r.device_error.as_deref().unwrap().contains("another-order"));

        // The record of this order with a batch in flight: known counts and the batch on top.
        let in_flight = device(
            DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper_lower(0, 3),
                reason: InDoubtReason::Interrupted,
            },
            vec![tally(1, 2, 2), tally(2, 3, 0)],
        );
        let r = recovered_report(&o, &CASSETTES, Ok(&rec(Some(in_flight), &this, false)));
        assert_eq!(
            (r.dispensed.minor, r.max_dispensed.map(|m| m.minor)),
            (20_000, Some(23_000))
        );
        let r = recovered_report(&o, &CASSETTES, Err("no answer"));
        assert_eq!(r.outcome, DispenseOutcome::InDoubt);
        assert_eq!(r.max_dispensed, Some(o.amount));
        assert!(r.device_error.unwrap().contains("no answer"));
    }
}
