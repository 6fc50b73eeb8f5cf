//! The simulated machine: cassettes, note path, reject tray, lifetime counters and injected
//! faults, advanced one note at a time. Pure: no port, no clock, no thread.
//!
//! The protocol side (frames, ACK/NAK, timing) is in `server`; this module decides what
//! happens to paper.

use serde::{Deserialize, Serialize};

use crate::dispenser::error::DeviceError;
use crate::dispenser::lcdm::message::{Counts, ErrorCode, Response, Slot};
use crate::dispenser::request::CassetteId;
use crate::dispenser::status::Sensors;

/// One simulated cassette.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cassette {
    /// Notes left in it.
    pub notes: u32,
    /// Seated and recognised.
    pub present: bool,
    /// Notes from this cassette that left the machine through EXIT, ever.
    pub delivered: u64,
}

/// A fault injected after a number of further notes have left the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultAfter {
    /// Notes that may still leave before the fault strikes (0 = at the next pick).
    pub notes: u32,
    /// The error reported.
    pub error: DeviceError,
}

/// Faults to inject. One-shot faults clear themselves when they strike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// After this many more notes, the next picked note jams at CHK and stays in the path
    /// (error 0x33).
    pub jam_after: Option<u32>,
    /// After this many more notes, the cassette fails to pick (error 0x32).
    pub pickup_error_after: Option<u32>,
    /// After this many more notes, the cassette in use reports bill end although notes remain.
    pub bill_end_after: Option<u32>,
    /// After `notes` more notes, the dispense stops with `error`, nothing left in the path.
    pub error_after: Option<FaultAfter>,
    /// After this many more notes, one more note is picked and the device loses power with it
    /// in the path: no response, silence until powered on again.
    pub power_loss_after: Option<u32>,
    /// Report near end whatever the note count.
    pub force_near_end: bool,
    /// The next this-many picked notes are doubles and go to the reject tray.
    pub reject_next: u32,
    /// Ignore every byte received (a dead or disconnected device).
    pub no_answer: bool,
    /// Damage the BCC of the next this-many response transmissions (resends included).
    pub corrupt_responses: u32,
    /// Answer the next this-many command frames with NAK.
    pub nak_commands: u32,
    /// The host's next this-many ACKs of responses are lost on the line: the device does
    /// not hear them and repeats its response (up to 3 sends in all), even after the host's
    /// next command has arrived.
    pub lose_acks: u32,
    /// Send idle noise (0xFF, 0x00 bytes) before every ACK and response.
    pub line_noise: bool,
}

impl Faults {
    /// Counts one note that left the machine against every "after N notes" fault.
    fn note_exited(&mut self) {
        for n in [
            &mut self.jam_after,
            &mut self.pickup_error_after,
            &mut self.bill_end_after,
            &mut self.power_loss_after,
        ]
        .into_iter()
        .flatten()
        {
            *n = n.saturating_sub(1);
        }
        if let Some(f) = &mut self.error_after {
            f.notes = f.notes.saturating_sub(1);
        }
    }
}

/// Takes a countdown fault if it is due now.
fn due(slot: &mut Option<u32>) -> bool {
    if *slot == Some(0) {
        *slot = None;
        true
    } else {
        false
    }
}

/// The persistent state of the simulated machine (what a state file holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    /// Cassettes, upper first.
    pub cassettes: Vec<Cassette>,
    /// A cassette at or below this many notes reports near end.
    pub near_end_threshold: u32,
    /// Notes in the reject tray.
    pub reject_tray: u32,
    /// The reject tray is seated.
    pub reject_tray_present: bool,
    /// Picked notes stuck in the path (jam, power loss); a purge moves them to the reject tray.
    pub in_path: u32,
    /// Notes picked from any cassette, ever.
    pub picked: u64,
    /// Fault latched until the next purge (jams and the like).
    pub latched_fault: Option<DeviceError>,
    /// The device has power.
    pub powered: bool,
}

impl Mechanism {
    /// A machine with `notes[i]` notes in cassette `i + 1`.
    pub fn new(notes: &[u32], near_end_threshold: u32) -> Self {
        Mechanism {
            cassettes: notes
                .iter()
                .map(|&notes| Cassette {
                    notes,
                    present: true,
                    delivered: 0,
                })
                .collect(),
            near_end_threshold,
            reject_tray: 0,
            reject_tray_present: true,
            in_path: 0,
            picked: 0,
            latched_fault: None,
            powered: true,
        }
    }

    /// Notes that left the machine through EXIT, all cassettes, ever.
    pub fn delivered(&self) -> u64 {
        self.cassettes.iter().map(|c| c.delivered).sum()
    }

    /// True when the cassette at `index` reports near end.
    pub fn near_end(&self, index: usize, faults: &Faults) -> bool {
        faults.force_near_end
            || self
                .cassettes
                .get(index)
                .is_some_and(|c| c.notes <= self.near_end_threshold)
    }

    /// The error byte a status request reports now.
    pub fn status_error(&self) -> ErrorCode {
        let fault = self.latched_fault.clone().or_else(|| {
            let ids = (0..self.cassettes.len()).filter_map(CassetteId::from_index);
            let cassettes: Vec<_> = ids.zip(&self.cassettes).collect();
            cassettes
                .iter()
                .find(|(_, c)| !c.present)
                .map(|(id, _)| DeviceError::CassetteNotRecognised { cassette: *id })
                .or_else(|| {
                    cassettes
                        .iter()
                        .find(|(_, c)| c.notes == 0)
                        .map(|(id, _)| DeviceError::BillEnd { cassette: *id })
                })
                .or_else(|| {
                    (!self.reject_tray_present).then_some(DeviceError::RejectTrayNotRecognised)
                })
        });
        code_for(fault.as_ref())
    }

    /// The sensor bits a status request reports now.
    pub fn sensors(&self, faults: &Faults) -> Sensors {
        let stuck = self.in_path > 0;
        Sensors {
            chk1: stuck,
            div1: stuck,
            near_end: self.near_end(0, faults),
            reject_tray_absent: !self.reject_tray_present,
            cassette_in_place: self.cassettes.first().is_some_and(|c| c.present),
            ..Sensors::default()
        }
    }

    /// Moves the notes in the path into the reject tray and clears a latched fault.
    pub fn purge(&mut self) -> ErrorCode {
        if !self.reject_tray_present {
            return code_for(Some(&DeviceError::RejectTrayNotRecognised));
        }
        self.reject_tray += self.in_path;
        self.in_path = 0;
        self.latched_fault = None;
        ErrorCode::GOOD
    }
}

/// What one step of a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A note left through EXIT.
    Exited,
    /// A note went to the reject tray.
    Rejected,
    /// The run stopped with a fault.
    Stopped(DeviceError),
    /// Power was lost; the device answers nothing more.
    PowerLost,
    /// Every target reached.
    Done,
}

/// Per-cassette counts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RunCounts {
    chk: u32,
    exit: u32,
    rejected: u32,
}

/// One dispense or test-dispense command being executed, note by note.
#[derive(Clone, Debug)]
pub struct Run {
    /// (cassette index, notes to deliver) in the order they are worked.
    targets: Vec<(usize, u32)>,
    counts: Vec<RunCounts>,
    position: usize,
    test: bool,
    error: Option<DeviceError>,
}

impl Run {
    /// Deliver `notes` from each listed cassette index, in order.
    pub fn dispense(targets: Vec<(usize, u32)>) -> Run {
        let counts = vec![RunCounts::default(); targets.len()];
        Run {
            targets,
            counts,
            position: 0,
            test: false,
            error: None,
        }
    }

    /// Move one note from cassette `index` into the reject tray.
    pub fn test(index: usize) -> Run {
        Run {
            test: true,
            ..Run::dispense(vec![(index, 1)])
        }
    }

    /// Advances by one note.
    pub fn step(&mut self, m: &mut Mechanism, faults: &mut Faults) -> Step {
        if self.error.is_some() {
            return Step::Done;
        }
        let Some(&(index, target)) = self.targets.get(self.position) else {
            return Step::Done;
        };
        let id = CassetteId::from_index(index).unwrap_or(CassetteId::UPPER);
        let Some(cassette) = m.cassettes.get_mut(index) else {
            return self.stop(m, DeviceError::UndefinedCommand);
        };
        if !cassette.present {
            return self.stop(m, DeviceError::CassetteNotRecognised { cassette: id });
        }
        if due(&mut faults.power_loss_after) {
            if cassette.notes > 0 {
                cassette.notes -= 1;
                m.picked += 1;
                m.in_path += 1;
                self.counts[self.position].chk += 1;
            }
            m.powered = false;
            return Step::PowerLost;
        }
        if faults.error_after.as_ref().is_some_and(|f| f.notes == 0)
            && let Some(f) = faults.error_after.take()
        {
            // A fault in the note path strikes a note already picked: it stays inside
            // (counted at CHK, never at EXIT) until a purge moves it to the reject tray.
            if f.error.leaves_notes_in_path() && cassette.notes > 0 {
                cassette.notes -= 1;
                m.picked += 1;
                m.in_path += 1;
                self.counts[self.position].chk += 1;
            }
            return self.stop(m, f.error);
        }
        if due(&mut faults.pickup_error_after) {
            return self.stop(m, DeviceError::PickupError);
        }
        if due(&mut faults.bill_end_after) || cassette.notes == 0 {
            return self.stop(m, DeviceError::BillEnd { cassette: id });
        }
        cassette.notes -= 1;
        m.picked += 1;
        let counts = &mut self.counts[self.position];
        counts.chk += 1;
        if due(&mut faults.jam_after) {
            m.in_path += 1;
            return self.stop(m, DeviceError::JamAtChk);
        }
        if self.test || faults.reject_next > 0 {
            if !self.test {
                faults.reject_next -= 1;
            }
            counts.rejected += 1;
            m.reject_tray += 1;
            if self.test {
                self.position += 1;
            }
            Step::Rejected
        } else {
            counts.exit += 1;
            cassette.delivered += 1;
            faults.note_exited();
            if counts.exit == target {
                self.position += 1;
            }
            Step::Exited
        }
    }

    fn stop(&mut self, m: &mut Mechanism, error: DeviceError) -> Step {
        if error.leaves_notes_in_path() {
            m.latched_fault = Some(error.clone());
        }
        self.error = Some(error.clone());
        Step::Stopped(error)
    }

    /// The error the run ended with, if any.
    pub fn error(&self) -> Option<&DeviceError> {
        self.error.as_ref()
    }

    /// The counts for the cassette at `index`, as the response reports them.
    pub fn counts_for(&self, index: usize, m: &Mechanism, faults: &Faults) -> Counts {
        let c = self
            .targets
            .iter()
            .position(|(i, _)| *i == index)
            .map(|p| self.counts[p])
            .unwrap_or_default();
        let two = |n: u32| u8::try_from(n.min(99)).unwrap_or(99);
        Counts {
            chk: two(c.chk),
            exit: two(c.exit),
            rejected: two(c.rejected),
            near_end: m.near_end(index, faults),
        }
    }

    /// The response to send for a finished run of a single-cassette command.
    pub fn response_single(
        &self,
        slot: Slot,
        test: bool,
        m: &Mechanism,
        faults: &Faults,
    ) -> Response {
        let counts = self.counts_for(slot_index(slot), m, faults);
        let error = code_for(self.error.as_ref());
        if test {
            Response::TestDispense {
                slot,
                counts,
                error,
            }
        } else {
            Response::Dispense {
                slot,
                counts,
                error,
            }
        }
    }

    /// The response to send for a finished run of a combined command.
    pub fn response_both(&self, m: &Mechanism, faults: &Faults) -> Response {
        Response::DispenseBoth {
            upper: self.counts_for(0, m, faults),
            lower: self.counts_for(1, m, faults),
            error: code_for(self.error.as_ref()),
        }
    }
}

/// Cassette index of an LCDM slot.
pub fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::Upper => 0,
        Slot::Lower => 1,
    }
}

/// The error byte for a fault (good when none); faults an LCDM cannot express are sent as
/// "motor stop", which at least stops the host.
pub fn code_for(fault: Option<&DeviceError>) -> ErrorCode {
    match fault {
        None => ErrorCode::GOOD,
        Some(f) => ErrorCode::from_fault(f).unwrap_or(ErrorCode(0x41)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_to_end(run: &mut Run, m: &mut Mechanism, f: &mut Faults) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            let s = run.step(m, f);
            let end = matches!(s, Step::Done | Step::Stopped(_) | Step::PowerLost);
            steps.push(s);
            if end {
                return steps;
            }
        }
    }

    #[test]
    fn clean_dispense_moves_notes_out() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults::default();
        let mut run = Run::dispense(vec![(0, 5)]);
        let steps = run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(steps.len(), 6);
        assert_eq!(m.cassettes[0].notes, 95);
        assert_eq!(m.delivered(), 5);
        assert_eq!(
            run.response_single(Slot::Upper, false, &m, &f),
            Response::Dispense {
                slot: Slot::Upper,
                counts: Counts {
                    chk: 5,
                    exit: 5,
                    rejected: 0,
                    near_end: false
                },
                error: ErrorCode::GOOD
            }
        );
    }

    #[test]
    fn doubles_are_rejected_and_replaced() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults {
            reject_next: 2,
            ..Faults::default()
        };
        let mut run = Run::dispense(vec![(0, 3)]);
        run_to_end(&mut run, &mut m, &mut f);
        let c = run.counts_for(0, &m, &f);
        assert_eq!((c.chk, c.exit, c.rejected), (5, 3, 2));
        assert_eq!(m.reject_tray, 2);
        assert_eq!(m.delivered(), 3);
        assert_eq!(f.reject_next, 0);
    }

    #[test]
    fn jam_after_n_leaves_a_note_in_the_path_until_purge() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults {
            jam_after: Some(3),
            ..Faults::default()
        };
        let mut run = Run::dispense(vec![(0, 10)]);
        let steps = run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(steps.last(), Some(&Step::Stopped(DeviceError::JamAtChk)));
        let c = run.counts_for(0, &m, &f);
        assert_eq!((c.chk, c.exit), (4, 3));
        assert_eq!(m.in_path, 1);
        assert_eq!(f.jam_after, None, "one-shot");
        assert_eq!(m.status_error(), ErrorCode(0x33));
        assert!(m.sensors(&f).notes_in_path());
        assert_eq!(m.purge(), ErrorCode::GOOD);
        assert_eq!((m.in_path, m.reject_tray), (0, 1));
        assert_eq!(m.status_error(), ErrorCode::GOOD);
        assert!(!m.sensors(&f).notes_in_path());
    }

    #[test]
    fn countdown_spans_commands() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults {
            pickup_error_after: Some(25),
            ..Faults::default()
        };
        let mut first = Run::dispense(vec![(0, 20)]);
        run_to_end(&mut first, &mut m, &mut f);
        assert_eq!(first.error(), None);
        let mut second = Run::dispense(vec![(0, 20)]);
        run_to_end(&mut second, &mut m, &mut f);
        assert_eq!(second.error(), Some(&DeviceError::PickupError));
        assert_eq!(second.counts_for(0, &m, &f).exit, 5);
        assert_eq!(m.in_path, 0);
        assert_eq!(
            m.status_error(),
            ErrorCode::GOOD,
            "pickup errors do not latch"
        );
    }

    #[test]
    fn running_dry_is_bill_end_and_near_end_follows_the_threshold() {
        let mut m = Mechanism::new(&[0, 12], 10);
        let mut f = Faults::default();
        assert!(!m.near_end(1, &f));
        let mut run = Run::dispense(vec![(1, 5)]);
        run_to_end(&mut run, &mut m, &mut f);
        assert!(m.near_end(1, &f));
        assert!(run.counts_for(1, &m, &f).near_end);
        let mut run = Run::dispense(vec![(1, 10)]);
        run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(
            run.error(),
            Some(&DeviceError::BillEnd {
                cassette: CassetteId::LOWER
            })
        );
        assert_eq!(run.counts_for(1, &m, &f).exit, 7);
        assert_eq!(m.status_error(), ErrorCode(0x38), "upper is empty");
        let mut run = Run::dispense(vec![(0, 1)]);
        run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(
            run.error(),
            Some(&DeviceError::BillEnd {
                cassette: CassetteId::UPPER
            })
        );
    }

    #[test]
    fn forced_bill_end_and_injected_errors() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults {
            bill_end_after: Some(2),
            ..Faults::default()
        };
        let mut run = Run::dispense(vec![(0, 5)]);
        run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(run.counts_for(0, &m, &f).exit, 2);
        assert!(matches!(run.error(), Some(DeviceError::BillEnd { .. })));

        f.error_after = Some(FaultAfter {
            notes: 1,
            error: DeviceError::OverReject,
        });
        let mut run = Run::dispense(vec![(0, 5)]);
        run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(run.error(), Some(&DeviceError::OverReject));
        assert_eq!(run.counts_for(0, &m, &f).exit, 1);
        assert_eq!(
            run.response_single(Slot::Upper, false, &m, &f).error(),
            Some(ErrorCode(0x44))
        );
    }

    #[test]
    fn a_fault_in_the_note_path_leaves_the_picked_note_inside_until_a_purge() {
        for (error, stuck) in [
            (DeviceError::JamAtDiv, 1),
            (DeviceError::MotorStop, 1),
            (DeviceError::CountingErrorEjtExit, 1),
            (DeviceError::OverReject, 0),
            (DeviceError::RejectTrayNotRecognised, 0),
        ] {
            let mut m = Mechanism::new(&[10], 1);
            let mut f = Faults {
                error_after: Some(FaultAfter {
                    notes: 2,
                    error: error.clone(),
                }),
                ..Faults::default()
            };
            let before = m.cassettes[0].notes;
            let mut run = Run::dispense(vec![(0, 5)]);
            run_to_end(&mut run, &mut m, &mut f);
            let counts = run.counts_for(0, &m, &f);
            assert_eq!(counts.exit, 2, "{error:?}");
            assert_eq!(counts.chk, 2 + stuck, "{error:?}: picked, not exited");
            assert_eq!(m.in_path, u32::from(stuck), "{error:?}");
            assert_eq!(
                m.cassettes[0].notes,
                before - 2 - u32::from(stuck),
                "{error:?}"
            );
            assert_eq!(m.sensors(&f).notes_in_path(), stuck > 0, "{error:?}");
            let tray = m.reject_tray;
            m.purge();
            assert_eq!(m.in_path, 0, "{error:?}");
            assert_eq!(
                m.reject_tray,
                tray + u32::from(stuck),
                "{error:?}: purged to the tray"
            );
        }
    }

    #[test]
    fn power_loss_keeps_a_note_in_the_path() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults {
            power_loss_after: Some(7),
            ..Faults::default()
        };
        let mut run = Run::dispense(vec![(0, 20)]);
        let steps = run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(steps.last(), Some(&Step::PowerLost));
        assert!(!m.powered);
        assert_eq!(m.delivered(), 7);
        assert_eq!(m.in_path, 1);
        assert_eq!(m.cassettes[0].notes, 92);
        assert_eq!(m.picked, 8);
    }

    #[test]
    fn missing_cassette_and_reject_tray() {
        let mut m = Mechanism::new(&[100, 100], 10);
        let mut f = Faults::default();
        m.cassettes[1].present = false;
        assert_eq!(m.status_error(), ErrorCode(0x46));
        let mut run = Run::dispense(vec![(0, 2), (1, 2)]);
        run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(
            run.error(),
            Some(&DeviceError::CassetteNotRecognised {
                cassette: CassetteId::LOWER
            })
        );
        assert_eq!(
            run.response_both(&m, &f),
            Response::DispenseBoth {
                upper: Counts {
                    chk: 2,
                    exit: 2,
                    rejected: 0,
                    near_end: false
                },
                lower: Counts::default(),
                error: ErrorCode(0x46)
            }
        );
        m.cassettes[1].present = true;
        m.reject_tray_present = false;
        assert_eq!(m.status_error(), ErrorCode(0x3F));
        assert!(m.sensors(&f).reject_tray_absent);
        assert_eq!(m.purge(), ErrorCode(0x3F));
        m.cassettes[0].present = false;
        assert!(!m.sensors(&f).cassette_in_place);
    }

    #[test]
    fn test_dispense_rejects_one_note() {
        let mut m = Mechanism::new(&[100], 10);
        let mut f = Faults::default();
        let mut run = Run::test(0);
        let steps = run_to_end(&mut run, &mut m, &mut f);
        assert_eq!(steps, vec![Step::Rejected, Step::Done]);
        assert_eq!(
            (m.reject_tray, m.delivered(), m.cassettes[0].notes),
            (1, 0, 99)
        );
        let c = run.counts_for(0, &m, &f);
        assert_eq!((c.chk, c.exit, c.rejected), (1, 0, 1));
    }

    #[test]
    fn mechanism_state_round_trips_as_json() {
        let mut m = Mechanism::new(&[5, 6], 2);
        m.in_path = 1;
        m.latched_fault = Some(DeviceError::JamAtChk);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Mechanism>(&json).unwrap(), m);
        let f = Faults {
            error_after: Some(FaultAfter {
                notes: 3,
                error: DeviceError::MotorStop,
            }),
            ..Faults::default()
        };
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Faults>(&json).unwrap(), f);
        assert_eq!(
            serde_json::from_str::<Faults>(r#"{"no_answer":true}"#).unwrap(),
            Faults {
                no_answer: true,
                ..Faults::default()
            }
        );
    }
}
