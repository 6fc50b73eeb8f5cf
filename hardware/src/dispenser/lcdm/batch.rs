//! Splitting a dispense into LCDM batches and summing what the device reports, as a pure
//! state machine.
//!
//! Batches carry at most `max_per_batch` notes per cassette (20 by default, 60 at most);
//! cassettes with notes left share a combined command on an LCDM-2000. The run stops at the
//! first fault with the counts so far, and ends in doubt when a batch's fate is unknown.
//! Sending, pausing between batches and journalling are the shell's job.

use super::link::LinkFailure;
use super::message::{BatchCount, Command, Counts, ErrorCode, Response, Slot};
use crate::dispenser::error::{DeviceError, DispenserError};
use crate::dispenser::outcome::{
    CassetteTally, DispenseOutcome, DispenseResult, InDoubtReason, StopReason,
};
use crate::dispenser::request::{CassetteId, DispenseRequest};
use crate::dispenser::status::CassetteState;

/// One batch: notes per slot (upper, lower).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    upper: u32,
    lower: u32,
}

impl Batch {
    fn command(self) -> Option<Command> {
        match (BatchCount::new(self.upper), BatchCount::new(self.lower)) {
            (Some(upper), Some(lower)) => Some(Command::DispenseBoth { upper, lower }),
            (Some(count), None) => Some(Command::Dispense {
                slot: Slot::Upper,
                count,
            }),
            (None, Some(count)) => Some(Command::Dispense {
                slot: Slot::Lower,
                count,
            }),
            (None, None) => None,
        }
    }

    fn notes(self, slot: Slot) -> u32 {
        match slot {
            Slot::Upper => self.upper,
            Slot::Lower => self.lower,
        }
    }
}

/// A dispense in progress: which batch is out, what has been counted, how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispenseRun {
    cassettes: usize,
    max_per_batch: u32,
    requested: DispenseRequest,
    tallies: Vec<CassetteTally>,
    remaining: Batch,
    in_flight: Option<Batch>,
    batches_done: usize,
    result: Option<DispenseResult>,
}

impl DispenseRun {
    /// Validates a request for a dispenser with `cassettes` cassettes (1 or 2).
    pub fn new(
        request: &DispenseRequest,
        cassettes: usize,
        max_per_batch: u8,
    ) -> Result<DispenseRun, DispenserError> {
        if !(1..=BatchCount::MAX).contains(&max_per_batch) {
            return Err(DispenserError::Config(format!(
                "max notes per batch {max_per_batch} outside 1..={}",
                BatchCount::MAX
            )));
        }
        if !(1..=2).contains(&cassettes) {
            return Err(DispenserError::Config(format!(
                "an LCDM has 1 or 2 cassettes, not {cassettes}"
            )));
        }
        if request.is_empty() {
            return Err(DispenserError::InvalidRequest(
                "no notes requested".to_string(),
            ));
        }
        if let Some((cassette, _)) = request
            .non_zero()
            .find(|(c, _)| c.index().is_none_or(|i| i >= cassettes))
        {
            return Err(DispenserError::InvalidRequest(format!(
                "{cassette} does not exist on a dispenser with {cassettes} cassette(s)"
            )));
        }
        let tallies = (0..cassettes)
            .filter_map(CassetteId::from_index)
            .map(|c| CassetteTally::new(c, request.notes_for(c)))
            .collect();
        Ok(DispenseRun {
            cassettes,
            max_per_batch: u32::from(max_per_batch),
            requested: request.clone(),
            tallies,
            remaining: Batch {
                upper: request.notes_for(CassetteId::UPPER),
                lower: request.notes_for(CassetteId::LOWER),
            },
            in_flight: None,
            batches_done: 0,
            result: None,
        })
    }

    /// Takes up a run that stopped with a batch in flight (the driver's record after a crash),
    /// so that the device's late answer to that batch can be applied with
    /// [`DispenseRun::settle_late`]. `None` unless `outcome` is in doubt because the driver
    /// was interrupted, or when its counts do not fit together.
    pub fn resume(outcome: &DispenseOutcome, max_per_batch: u8) -> Option<DispenseRun> {
        let DispenseResult::InDoubt {
            in_flight,
            reason: InDoubtReason::Interrupted,
        } = &outcome.result
        else {
            return None;
        };
        let mut run = DispenseRun::new(
            &outcome.requested,
            outcome.cassettes.len(),
            max_per_batch.max(1),
        )
        .ok()?;
        if outcome
            .cassettes
            .iter()
            .map(|t| t.cassette)
            .ne(run.tallies.iter().map(|t| t.cassette))
        {
            return None;
        }
        run.tallies = outcome.cassettes.clone();
        // Every batch before the one in flight delivered exactly what it asked for (any
        // other answer ends the run), so what is left is the request less what exited.
        let left = |c: CassetteId| {
            outcome
                .requested
                .notes_for(c)
                .checked_sub(outcome.tally(c).map_or(0, |t| t.exited))
        };
        run.remaining = Batch {
            upper: left(CassetteId::UPPER)?,
            lower: left(CassetteId::LOWER)?,
        };
        let batch = Batch {
            upper: in_flight.notes_for(CassetteId::UPPER),
            lower: in_flight.notes_for(CassetteId::LOWER),
        };
        if batch.command().is_none()
            || batch.upper > run.remaining.upper
            || batch.lower > run.remaining.lower
        {
            return None;
        }
        run.batches_done = usize::from(outcome.delivered_total() > 0);
        run.in_flight = Some(batch);
        Some(run)
    }

    /// Applies the device's late answer to the batch in flight of a resumed run and returns
    /// the outcome it proves: the batch's counts are now known, and batches after it were
    /// never sent (`Stopped { Interrupted }` unless the request is complete). `None` when
    /// the answer does not answer that batch's command: then the batch stays in doubt.
    pub fn settle_late(mut self, response: &Response) -> Option<DispenseOutcome> {
        self.on_response(response);
        match &self.result {
            Some(DispenseResult::InDoubt { .. }) => None,
            Some(_) => Some(self.snapshot()),
            None => {
                self.result = Some(DispenseResult::Stopped {
                    reason: StopReason::Interrupted,
                });
                Some(self.snapshot())
            }
        }
    }

    /// The next command to send, or `None` when the run is over. The returned batch counts
    /// as in flight until `on_response` or `on_failure`.
    pub fn next_command(&mut self) -> Option<Command> {
        if self.result.is_some() {
            return None;
        }
        debug_assert!(self.in_flight.is_none(), "one batch at a time");
        let batch = Batch {
            upper: self.remaining.upper.min(self.max_per_batch),
            lower: self.remaining.lower.min(self.max_per_batch),
        };
        match batch.command() {
            Some(command) => {
                self.in_flight = Some(batch);
                Some(command)
            }
            None => {
                self.result = Some(DispenseResult::Completed);
                None
            }
        }
    }

    /// Batches answered so far.
    pub fn batches_done(&self) -> usize {
        self.batches_done
    }

    /// True once the run has a result.
    pub fn is_finished(&self) -> bool {
        self.result.is_some()
    }

    /// Applies the device's answer to the batch in flight.
    pub fn on_response(&mut self, response: &Response) {
        let Some(batch) = self.in_flight.take() else {
            debug_assert!(false, "response without a batch in flight");
            return;
        };
        let per_slot: Vec<(Slot, Counts)> = match (response, batch.command()) {
            (
                Response::Dispense { slot, counts, .. },
                Some(Command::Dispense { slot: sent, .. }),
            ) if *slot == sent => vec![(*slot, *counts)],
            (Response::DispenseBoth { upper, lower, .. }, Some(Command::DispenseBoth { .. })) => {
                vec![(Slot::Upper, *upper), (Slot::Lower, *lower)]
            }
            _ => {
                let detail = format!(
                    "response {:#04x} does not answer the batch sent",
                    response.code()
                );
                self.result =
                    Some(self.in_doubt(batch, InDoubtReason::MalformedResponse { detail }));
                return;
            }
        };
        self.batches_done += 1;
        for (slot, counts) in &per_slot {
            if let Some(tally) = self.tally_mut(slot.cassette()) {
                tally.picked += u32::from(counts.chk);
                tally.exited += u32::from(counts.exit);
                tally.rejected += u32::from(counts.rejected);
                tally.state = if counts.near_end {
                    CassetteState::NearEnd
                } else {
                    CassetteState::Normal
                };
            }
        }
        let error = response.error().unwrap_or(ErrorCode::GOOD);
        if let Some(fault) = error.fault() {
            self.mark_cassette_fault(&fault);
            self.result = Some(DispenseResult::Stopped {
                reason: StopReason::Device { error: fault },
            });
            return;
        }
        for (slot, counts) in &per_slot {
            let expected = batch.notes(*slot);
            if u32::from(counts.exit) != expected {
                self.result = Some(DispenseResult::Stopped {
                    reason: StopReason::CountMismatch {
                        cassette: slot.cassette(),
                        expected,
                        exited: u32::from(counts.exit),
                    },
                });
                return;
            }
        }
        self.remaining.upper -= batch.upper;
        self.remaining.lower -= batch.lower;
        if self.remaining.upper == 0 && self.remaining.lower == 0 {
            self.result = Some(DispenseResult::Completed);
        }
    }

    /// The batch in flight got no usable answer.
    pub fn on_failure(&mut self, failure: &LinkFailure) {
        let Some(batch) = self.in_flight.take() else {
            debug_assert!(false, "failure without a batch in flight");
            return;
        };
        let result = match failure {
            LinkFailure::Rejected { sends } => DispenseResult::Stopped {
                reason: StopReason::CommandRejected { sends: *sends },
            },
            LinkFailure::NoAcknowledge { .. } => self.in_doubt(
                batch,
                InDoubtReason::NoResponse {
                    acknowledged: false,
                },
            ),
            LinkFailure::NoResponse { acknowledged } => self.in_doubt(
                batch,
                InDoubtReason::NoResponse {
                    acknowledged: *acknowledged,
                },
            ),
            LinkFailure::Unreadable { naks } => {
                self.in_doubt(batch, InDoubtReason::UnreadableResponse { naks: *naks })
            }
            LinkFailure::Malformed(e) => self.in_doubt(
                batch,
                InDoubtReason::MalformedResponse {
                    detail: e.to_string(),
                },
            ),
        };
        self.result = Some(result);
    }

    /// The batch handed out by `next_command` will not be sent after all (the journal could
    /// not be written, or the port failed before the command went out).
    pub fn abandon_in_flight(&mut self) {
        if self.in_flight.take().is_some() {
            self.result = Some(DispenseResult::Stopped {
                reason: StopReason::Interrupted,
            });
        }
    }

    /// The port failed after the batch may have been sent.
    pub fn on_io_error(&mut self, detail: String) {
        if let Some(batch) = self.in_flight.take() {
            self.result = Some(self.in_doubt(batch, InDoubtReason::Io { detail }));
        }
    }

    /// The outcome to report if everything stopped right now: final once finished, in doubt
    /// (interrupted) while a batch is in flight. This is what gets journalled before a batch
    /// is sent.
    pub fn snapshot(&self) -> DispenseOutcome {
        let result = match (&self.result, self.in_flight) {
            (Some(result), _) => result.clone(),
            (None, Some(batch)) => self.in_doubt(batch, InDoubtReason::Interrupted),
            // Between batches nothing is moving: the counts are exact.
            (None, None) => DispenseResult::Stopped {
                reason: StopReason::Interrupted,
            },
        };
        DispenseOutcome {
            requested: self.requested.clone(),
            cassettes: self.tallies.clone(),
            result,
        }
    }

    /// The final outcome (call once finished).
    pub fn outcome(&self) -> DispenseOutcome {
        debug_assert!(self.is_finished());
        self.snapshot()
    }

    fn in_doubt(&self, batch: Batch, reason: InDoubtReason) -> DispenseResult {
        let counts = [batch.upper, batch.lower];
        DispenseResult::InDoubt {
            in_flight: DispenseRequest::from_counts(&counts[..self.cassettes]),
            reason,
        }
    }

    fn tally_mut(&mut self, cassette: CassetteId) -> Option<&mut CassetteTally> {
        self.tallies.iter_mut().find(|t| t.cassette == cassette)
    }

    fn mark_cassette_fault(&mut self, fault: &DeviceError) {
        let (cassette, state) = match fault {
            DeviceError::BillEnd { cassette } => (*cassette, CassetteState::Empty),
            DeviceError::CassetteNotRecognised { cassette } => (*cassette, CassetteState::Missing),
            _ => return,
        };
        if let Some(tally) = self.tally_mut(cassette) {
            tally.state = state;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn good(slot: Slot, n: u8) -> Response {
        Response::Dispense {
            slot,
            counts: Counts {
                chk: n,
                exit: n,
                rejected: 0,
                near_end: false,
            },
            error: ErrorCode::GOOD,
        }
    }

    fn both(u: u8, l: u8) -> Response {
        let c = |n| Counts {
            chk: n,
            exit: n,
            rejected: 0,
            near_end: false,
        };
        Response::DispenseBoth {
            upper: c(u),
            lower: c(l),
            error: ErrorCode::GOOD,
        }
    }

    fn bc(n: u32) -> BatchCount {
        BatchCount::new(n).unwrap()
    }

    #[test]
    fn validation() {
        let err = |r: &DispenseRequest, c, m| DispenseRun::new(r, c, m).unwrap_err();
        assert!(matches!(
            err(&DispenseRequest::default(), 1, 20),
            DispenserError::InvalidRequest(_)
        ));
        assert!(matches!(
            err(&DispenseRequest::upper_lower(1, 1), 1, 20),
            DispenserError::InvalidRequest(_)
        ));
        assert!(matches!(
            err(&DispenseRequest::upper(1), 1, 61),
            DispenserError::Config(_)
        ));
        assert!(matches!(
            err(&DispenseRequest::upper(1), 3, 20),
            DispenserError::Config(_)
        ));
        // Trailing zeros for absent cassettes are fine.
        assert!(DispenseRun::new(&DispenseRequest::from_counts([4, 0, 0]), 1, 20).is_ok());
    }

    #[test]
    fn large_single_cassette_request_is_batched_by_twenty() {
        let mut run = DispenseRun::new(&DispenseRequest::upper(45), 1, 20).unwrap();
        let mut sent = Vec::new();
        while let Some(cmd) = run.next_command() {
            let Command::Dispense { count, .. } = cmd else {
                panic!("{cmd:?}")
            };
            sent.push(count.get());
            run.on_response(&good(Slot::Upper, count.get()));
        }
        assert_eq!(sent, vec![20, 20, 5]);
        let o = run.outcome();
        assert!(o.is_completed());
        assert_eq!(o.delivered(CassetteId::UPPER), 45);
        assert_eq!(run.batches_done(), 3);
    }

    #[test]
    fn two_cassettes_share_combined_commands_then_continue_alone() {
        let mut run = DispenseRun::new(&DispenseRequest::upper_lower(25, 50), 2, 20).unwrap();
        let mut sent = Vec::new();
        while let Some(cmd) = run.next_command() {
            sent.push(cmd);
            match cmd {
                Command::DispenseBoth { upper, lower } => {
                    run.on_response(&both(upper.get(), lower.get()))
                }
                Command::Dispense { slot, count } => run.on_response(&good(slot, count.get())),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            sent,
            vec![
                Command::DispenseBoth {
                    upper: bc(20),
                    lower: bc(20)
                },
                Command::DispenseBoth {
                    upper: bc(5),
                    lower: bc(20)
                },
                Command::Dispense {
                    slot: Slot::Lower,
                    count: bc(10)
                },
            ]
        );
        let o = run.outcome();
        assert!(o.is_completed());
        assert_eq!(o.delivered(CassetteId::UPPER), 25);
        assert_eq!(o.delivered(CassetteId::LOWER), 50);
    }

    #[test]
    fn lower_only_uses_the_lower_command() {
        let mut run = DispenseRun::new(&DispenseRequest::upper_lower(0, 3), 2, 20).unwrap();
        assert_eq!(
            run.next_command(),
            Some(Command::Dispense {
                slot: Slot::Lower,
                count: bc(3)
            })
        );
    }

    #[test]
    fn fault_stops_the_run_with_partial_counts() {
        let mut run = DispenseRun::new(&DispenseRequest::upper(50), 1, 20).unwrap();
        run.next_command();
        run.on_response(&good(Slot::Upper, 20));
        run.next_command();
        run.on_response(&Response::Dispense {
            slot: Slot::Upper,
            counts: Counts {
                chk: 8,
                exit: 7,
                rejected: 0,
                near_end: true,
            },
            error: ErrorCode(0x33),
        });
        assert_eq!(run.next_command(), None, "no batch after a fault");
        let o = run.outcome();
        let t = o.tally(CassetteId::UPPER).unwrap();
        assert_eq!((t.picked, t.exited, t.rejected), (28, 27, 0));
        assert_eq!(t.state, CassetteState::NearEnd);
        assert_eq!(t.unaccounted(), 1);
        assert_eq!(
            o.result,
            DispenseResult::Stopped {
                reason: StopReason::Device {
                    error: DeviceError::JamAtChk
                }
            }
        );
        assert!(o.needs_recovery());
    }

    #[test]
    fn bill_end_marks_the_cassette_empty() {
        let mut run = DispenseRun::new(&DispenseRequest::upper_lower(0, 10), 2, 20).unwrap();
        run.next_command();
        run.on_response(&Response::Dispense {
            slot: Slot::Lower,
            counts: Counts {
                chk: 4,
                exit: 4,
                rejected: 0,
                near_end: true,
            },
            error: ErrorCode(0x40),
        });
        let o = run.outcome();
        assert_eq!(
            o.tally(CassetteId::LOWER).unwrap().state,
            CassetteState::Empty
        );
        assert_eq!(
            o.tally(CassetteId::UPPER).unwrap().state,
            CassetteState::Unknown
        );
        assert_eq!(o.delivered_total(), 4);
        assert!(!o.needs_recovery());
    }

    #[test]
    fn rejects_are_counted_and_success_needs_the_exit_count() {
        let mut run = DispenseRun::new(&DispenseRequest::upper(10), 1, 20).unwrap();
        run.next_command();
        run.on_response(&Response::Dispense {
            slot: Slot::Upper,
            counts: Counts {
                chk: 12,
                exit: 10,
                rejected: 2,
                near_end: false,
            },
            error: ErrorCode::NORMAL_STOP,
        });
        let o = run.outcome();
        assert!(o.is_completed());
        assert_eq!(o.tally(CassetteId::UPPER).unwrap().rejected, 2);

        let mut run = DispenseRun::new(&DispenseRequest::upper(10), 1, 20).unwrap();
        run.next_command();
        run.on_response(&good(Slot::Upper, 9));
        assert_eq!(
            run.outcome().result,
            DispenseResult::Stopped {
                reason: StopReason::CountMismatch {
                    cassette: CassetteId::UPPER,
                    expected: 10,
                    exited: 9
                }
            }
        );
    }

    #[test]
    fn unknown_fate_is_in_doubt_with_the_batch_in_flight() {
        let mut run = DispenseRun::new(&DispenseRequest::upper_lower(30, 4), 2, 20).unwrap();
        run.next_command();
        run.on_response(&both(20, 4));
        run.next_command();
        // Journalled before sending: interrupted in doubt.
        assert_eq!(
            run.snapshot().result,
            DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper_lower(10, 0),
                reason: InDoubtReason::Interrupted
            }
        );
        run.on_failure(&LinkFailure::NoResponse { acknowledged: true });
        let o = run.outcome();
        assert_eq!(
            o.result,
            DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper_lower(10, 0),
                reason: InDoubtReason::NoResponse { acknowledged: true }
            }
        );
        assert_eq!(o.delivered(CassetteId::UPPER), 20);
        assert_eq!(o.max_possibly_delivered_total(), 34);
        assert_eq!(run.next_command(), None);
    }

    #[test]
    fn every_link_failure_but_rejection_is_in_doubt() {
        for failure in [
            LinkFailure::NoAcknowledge { sends: 4 },
            LinkFailure::NoResponse {
                acknowledged: false,
            },
            LinkFailure::Unreadable { naks: 3 },
            LinkFailure::Malformed(super::super::message::ParseError::BadCassetteByte(0x39)),
        ] {
            let mut run = DispenseRun::new(&DispenseRequest::upper(5), 1, 20).unwrap();
            run.next_command();
            run.on_failure(&failure);
            assert!(run.outcome().is_in_doubt(), "{failure:?}");
        }
        let mut run = DispenseRun::new(&DispenseRequest::upper(5), 1, 20).unwrap();
        run.next_command();
        run.on_io_error("EIO".into());
        assert!(run.outcome().is_in_doubt());

        let mut run = DispenseRun::new(&DispenseRequest::upper(5), 1, 20).unwrap();
        run.next_command();
        run.on_failure(&LinkFailure::Rejected { sends: 4 });
        let o = run.outcome();
        assert_eq!(
            o.result,
            DispenseResult::Stopped {
                reason: StopReason::CommandRejected { sends: 4 }
            }
        );
        assert_eq!(o.delivered_total(), 0);
    }

    #[test]
    fn response_for_the_wrong_command_is_in_doubt() {
        let mut run = DispenseRun::new(&DispenseRequest::upper(5), 1, 20).unwrap();
        run.next_command();
        run.on_response(&good(Slot::Lower, 5));
        assert!(run.outcome().is_in_doubt());
    }

    proptest! {
        #[test]
        fn batches_cover_the_request_exactly(
            upper in 0u32..200,
            lower in 0u32..200,
            max in 1u8..=60,
        ) {
            prop_assume!(upper + lower > 0);
            let mut run = DispenseRun::new(&DispenseRequest::upper_lower(upper, lower), 2, max).unwrap();
            let (mut u, mut l) = (0u32, 0u32);
            while let Some(cmd) = run.next_command() {
                let (bu, bl) = match cmd {
                    Command::DispenseBoth { upper, lower } => (upper.get(), lower.get()),
                    Command::Dispense { slot: Slot::Upper, count } => (count.get(), 0),
                    Command::Dispense { slot: Slot::Lower, count } => (0, count.get()),
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                prop_assert!(bu <= max && bl <= max);
                u += u32::from(bu);
                l += u32::from(bl);
                let response = match cmd {
                    Command::DispenseBoth { .. } => both(bu, bl),
                    Command::Dispense { slot, count } => good(slot, count.get()),
                    _ => unreachable!(),
                };
                run.on_response(&response);
            }
            prop_assert_eq!((u, l), (upper, lower));
            let o = run.outcome();
            prop_assert!(o.is_completed());
            prop_assert_eq!(o.delivered_total(), u64::from(upper + lower));
        }
    }

    #[test]
    fn a_late_answer_settles_the_batch_in_flight_and_nothing_after_it() {
        // 45 notes in batches of 20: the first batch answered, the second in flight when
        // the driver died.
        let mut run = DispenseRun::new(&DispenseRequest::upper(45), 1, 20).unwrap();
        run.next_command().unwrap();
        run.on_response(&good(Slot::Upper, 20));
        run.next_command().unwrap();
        let interrupted = run.snapshot();
        assert!(interrupted.is_in_doubt());

        let settled = DispenseRun::resume(&interrupted, 20)
            .unwrap()
            .settle_late(&good(Slot::Upper, 20))
            .unwrap();
        assert_eq!(settled.delivered_total(), 40);
        assert_eq!(
            settled.result,
            DispenseResult::Stopped {
                reason: StopReason::Interrupted
            },
            "the third batch was never sent"
        );
        assert_eq!(settled.max_possibly_delivered_total(), 40);

        // An answer to another command (the lower cassette) does not settle it.
        assert!(
            DispenseRun::resume(&interrupted, 20)
                .unwrap()
                .settle_late(&good(Slot::Lower, 20))
                .is_none()
        );
        // Only interrupted runs can be resumed.
        assert!(DispenseRun::resume(&settled, 20).is_none());
    }

    #[test]
    fn a_late_answer_to_the_last_batch_completes_the_run() {
        let mut run = DispenseRun::new(&DispenseRequest::upper(5), 1, 20).unwrap();
        run.next_command().unwrap();
        let settled = DispenseRun::resume(&run.snapshot(), 20)
            .unwrap()
            .settle_late(&good(Slot::Upper, 5))
            .unwrap();
        assert_eq!(settled.result, DispenseResult::Completed);
        assert_eq!(settled.delivered_total(), 5);
    }
}
