//! What a dispenser actually did: per-cassette counts, why it stopped, and the explicit
//! in-doubt outcome.
//!
//! These types are journalled by the agent as JSON, so their serde shape is part of the
//! contract. An outcome is never rounded: when the device cannot tell, the result is
//! `InDoubt`, carrying the counts that are known and the batch whose fate is not.

use serde::{Deserialize, Serialize};

use super::error::DeviceError;
use super::request::{CassetteId, DispenseRequest};
use super::status::{CassetteState, DispenserStatus};

/// Counts for one cassette, as reported by the device and summed over batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CassetteTally {
    /// Which cassette.
    pub cassette: CassetteId,
    /// Notes the request asked from this cassette.
    pub requested: u32,
    /// Notes counted at the pick (CHK) sensors.
    pub picked: u32,
    /// Notes counted at the EXIT sensor: what left the machine.
    pub exited: u32,
    /// Notes diverted into the reject tray.
    pub rejected: u32,
    /// Cassette state after the last response that mentioned it.
    pub state: CassetteState,
}

impl CassetteTally {
    /// A tally with nothing counted yet.
    pub fn new(cassette: CassetteId, requested: u32) -> Self {
        CassetteTally {
            cassette,
            requested,
            picked: 0,
            exited: 0,
            rejected: 0,
            state: CassetteState::Unknown,
        }
    }

    /// Picked notes that neither left the machine nor reached the reject tray: they are
    /// somewhere inside the machine.
    pub fn unaccounted(&self) -> u32 {
        self.picked
            .saturating_sub(self.exited.saturating_add(self.rejected))
    }
}

/// Why a dispense stopped early with known counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// The device reported a fault.
    Device {
        /// The fault.
        error: DeviceError,
    },
    /// The device refused (NAK) every send of a later batch; that batch did not run.
    CommandRejected {
        /// How many times the batch was sent.
        sends: u8,
    },
    /// The driver stopped between two batches (it crashed or restarted, or could not write
    /// its journal); nothing was in flight, so the counts are exact.
    Interrupted,
    /// The device reported success but its EXIT count differs from the batch size.
    CountMismatch {
        /// Which cassette.
        cassette: CassetteId,
        /// Notes the batch asked for.
        expected: u32,
        /// Notes the device counted at EXIT.
        exited: u32,
    },
}

/// Why the device could not tell what happened to a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InDoubtReason {
    /// No response arrived in time (the device may have lost power mid-dispense).
    NoResponse {
        /// Whether the device had acknowledged the command.
        acknowledged: bool,
    },
    /// Every copy of the response was damaged.
    UnreadableResponse {
        /// NAKs sent for damaged copies.
        naks: u8,
    },
    /// The response frame was intact but did not make sense.
    MalformedResponse {
        /// What was wrong with it.
        detail: String,
    },
    /// The serial port failed after the command may have been sent.
    Io {
        /// What the OS said.
        detail: String,
    },
    /// The driver stopped (crash, restart, power loss of the host) while the batch was in
    /// flight; found in the journal afterwards.
    Interrupted,
}

/// How a dispense ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DispenseResult {
    /// Every requested note left the machine.
    Completed,
    /// The dispense stopped early; the counts in the outcome are exact.
    Stopped {
        /// Why.
        reason: StopReason,
    },
    /// The fate of `in_flight` is unknown: anything from none to all of those notes may have
    /// left the machine, on top of the known counts.
    InDoubt {
        /// Notes per cassette of the batch whose outcome is unknown.
        in_flight: DispenseRequest,
        /// Why the outcome is unknown.
        reason: InDoubtReason,
    },
}

/// Result of a dispense: what was asked, what the device counted, how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispenseOutcome {
    /// The request as received.
    pub requested: DispenseRequest,
    /// Known counts per cassette (one entry per cassette of the dispenser).
    pub cassettes: Vec<CassetteTally>,
    /// How it ended.
    pub result: DispenseResult,
}

impl DispenseOutcome {
    /// True when every requested note left the machine.
    pub fn is_completed(&self) -> bool {
        matches!(self.result, DispenseResult::Completed)
    }

    /// True when the outcome is unknown for part of the request.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self.result, DispenseResult::InDoubt { .. })
    }

    /// Known notes that left the machine from `cassette`.
    pub fn delivered(&self, cassette: CassetteId) -> u32 {
        self.tally(cassette).map_or(0, |t| t.exited)
    }

    /// Known notes that left the machine, over all cassettes.
    pub fn delivered_total(&self) -> u64 {
        self.cassettes.iter().map(|t| u64::from(t.exited)).sum()
    }

    /// Upper bound of notes that may have left the machine: the known count plus, when in
    /// doubt, the whole in-flight batch.
    pub fn max_possibly_delivered_total(&self) -> u64 {
        let in_flight = match &self.result {
            DispenseResult::InDoubt { in_flight, .. } => in_flight.total(),
            _ => 0,
        };
        self.delivered_total() + in_flight
    }

    /// The tally of one cassette.
    pub fn tally(&self, cassette: CassetteId) -> Option<&CassetteTally> {
        self.cassettes.iter().find(|t| t.cassette == cassette)
    }

    /// True when the machine may hold notes from this dispense, so it must be recovered
    /// (status, purge) before the next one.
    pub fn needs_recovery(&self) -> bool {
        match &self.result {
            DispenseResult::InDoubt { .. } => true,
            DispenseResult::Stopped {
                reason: StopReason::Device { error },
            } if error.leaves_notes_in_path() => true,
            _ => self.cassettes.iter().any(|t| t.unaccounted() > 0),
        }
    }
}

/// Result of a test dispense (one note into the reject tray).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestDispenseOutcome {
    /// Counts reported for the tested cassette.
    pub tally: CassetteTally,
    /// Fault the device reported, if any.
    pub error: Option<DeviceError>,
}

/// Report of `Dispenser::recover_last`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// The last dispense as the driver knows it (from memory or its journal). An in-doubt
    /// outcome stays in doubt: recovery clears the machine, it cannot recount the notes.
    /// Only the device's own late answer to the batch in flight settles that batch.
    pub last: Option<DispenseOutcome>,
    /// Whose dispense `last` is: the reference given to `Dispenser::dispense`. A caller
    /// attributes `last` to one of its orders only when this is that order's reference.
    #[serde(default)]
    pub last_reference: Option<String>,
    /// When the command of `last`'s batch in flight was handed to the serial line (Unix
    /// milliseconds), if the driver died with one in flight.
    #[serde(default)]
    pub handed_at_ms: Option<u64>,
    /// Whether the device's late answer to that batch (read from the serial line after the
    /// restart) settled it; `last` then carries the counts of that answer.
    #[serde(default)]
    pub late_answer: bool,
    /// Device status before recovery.
    pub status_before: DispenserStatus,
    /// Whether a purge was run.
    pub purged: bool,
    /// Fault the purge reported, if any.
    pub purge_error: Option<DeviceError>,
    /// Device status after recovery.
    pub status_after: DispenserStatus,
}

impl Recovery {
    /// The last dispense, if it is the one named `reference`.
    pub fn last_for(&self, reference: &str) -> Option<&DispenseOutcome> {
        self.last
            .as_ref()
            .filter(|_| self.last_reference.as_deref() == Some(reference))
    }

    /// True when the machine is clear again (no notes in the path, no jam-type fault).
    pub fn machine_clear(&self) -> bool {
        !self.status_after.notes_in_path
            && self
                .status_after
                .error
                .as_ref()
                .is_none_or(|e| !e.leaves_notes_in_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(requested: u32, picked: u32, exited: u32, rejected: u32) -> CassetteTally {
        CassetteTally {
            picked,
            exited,
            rejected,
            state: CassetteState::Normal,
            ..CassetteTally::new(CassetteId::UPPER, requested)
        }
    }

    #[test]
    fn in_doubt_bounds_include_the_in_flight_batch() {
        let o = DispenseOutcome {
            requested: DispenseRequest::upper(45),
            cassettes: vec![tally(45, 21, 20, 1)],
            result: DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper(20),
                reason: InDoubtReason::NoResponse { acknowledged: true },
            },
        };
        assert!(o.is_in_doubt() && !o.is_completed());
        assert_eq!(o.delivered(CassetteId::UPPER), 20);
        assert_eq!(o.delivered(CassetteId::LOWER), 0);
        assert_eq!(o.delivered_total(), 20);
        assert_eq!(o.max_possibly_delivered_total(), 40);
        assert!(o.needs_recovery());
    }

    #[test]
    fn recovery_needed_only_when_notes_may_be_inside() {
        let done = DispenseOutcome {
            requested: DispenseRequest::upper(5),
            cassettes: vec![tally(5, 6, 5, 1)],
            result: DispenseResult::Completed,
        };
        assert!(!done.needs_recovery());
        let empty = DispenseOutcome {
            result: DispenseResult::Stopped {
                reason: StopReason::Device {
                    error: DeviceError::BillEnd {
                        cassette: CassetteId::UPPER,
                    },
                },
            },
            cassettes: vec![tally(5, 3, 3, 0)],
            ..done.clone()
        };
        assert!(!empty.needs_recovery());
        let jam = DispenseOutcome {
            result: DispenseResult::Stopped {
                reason: StopReason::Device {
                    error: DeviceError::JamAtChk,
                },
            },
            ..empty.clone()
        };
        assert!(jam.needs_recovery());
        let lost = DispenseOutcome {
            cassettes: vec![tally(5, 4, 3, 0)],
            ..empty
        };
        assert!(lost.needs_recovery(), "a picked note is unaccounted for");
    }

    #[test]
    fn outcome_json_round_trips_and_is_tagged() {
        let o = DispenseOutcome {
            requested: DispenseRequest::upper_lower(3, 2),
            cassettes: vec![tally(3, 3, 3, 0), CassetteTally::new(CassetteId::LOWER, 2)],
            result: DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper_lower(0, 2),
                reason: InDoubtReason::Interrupted,
            },
        };
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.contains(r#""result":"in_doubt""#), "{json}");
        assert!(json.contains(r#""kind":"interrupted""#), "{json}");
        assert_eq!(serde_json::from_str::<DispenseOutcome>(&json).unwrap(), o);
    }
}
