//! What the dispenser says about itself: cassette states, path sensors, pending fault.
//!
//! Vendor-neutral; the LCDM driver decodes its status bytes into these types.

use serde::{Deserialize, Serialize};

use super::error::DeviceError;
use super::request::CassetteId;

/// Fill state of one cassette, as far as the device can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CassetteState {
    /// Present and above the near-end mark.
    Normal,
    /// Present, few notes left.
    NearEnd,
    /// Present, no notes left (the device stopped with a bill-end error).
    Empty,
    /// Not seated or not recognised.
    Missing,
    /// The device has not said (e.g. no response arrived).
    Unknown,
}

/// State of one cassette in a status report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CassetteStatus {
    /// Which cassette.
    pub cassette: CassetteId,
    /// Its state.
    pub state: CassetteState,
}

/// Raw sensor readings of the note path, as the device reports them (true = blocked/active).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sensors {
    /// Pick sensor 1 (CHK1).
    pub chk1: bool,
    /// Pick sensor 2 (CHK2).
    pub chk2: bool,
    /// Diverter sensor 1 (DIV1).
    pub div1: bool,
    /// Diverter sensor 2 (DIV2).
    pub div2: bool,
    /// Eject sensor (EJT).
    pub ejt: bool,
    /// Exit sensor (EXIT).
    pub exit: bool,
    /// Near-end sensor of the (upper) cassette.
    pub near_end: bool,
    /// The reject tray is absent.
    pub reject_tray_absent: bool,
    /// The (upper) cassette sensor sees a cassette in place.
    pub cassette_in_place: bool,
    /// Diverter solenoid (SOL) sensor.
    pub sol: bool,
}

impl Sensors {
    /// True when any sensor along the note path is blocked, i.e. notes are inside the machine.
    pub fn notes_in_path(&self) -> bool {
        self.chk1 || self.chk2 || self.div1 || self.div2 || self.ejt || self.exit
    }
}

/// A status report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispenserStatus {
    /// Per-cassette state, in position order.
    pub cassettes: Vec<CassetteStatus>,
    /// Fault the device currently reports, if any.
    pub error: Option<DeviceError>,
    /// Notes are sitting in the note path (a purge moves them to the reject tray).
    pub notes_in_path: bool,
    /// The reject tray is seated.
    pub reject_tray_present: bool,
    /// The raw sensor readings behind the summary above.
    pub sensors: Sensors,
}

impl DispenserStatus {
    /// True when a dispense can start: no fault, a clear path, the reject tray and every
    /// cassette in place.
    pub fn is_ready(&self) -> bool {
        self.error.is_none()
            && !self.notes_in_path
            && self.reject_tray_present
            && self
                .cassettes
                .iter()
                .all(|c| !matches!(c.state, CassetteState::Missing | CassetteState::Empty))
    }

    /// State of one cassette (`Unknown` for positions the report does not cover).
    pub fn cassette(&self, cassette: CassetteId) -> CassetteState {
        self.cassettes
            .iter()
            .find(|c| c.cassette == cassette)
            .map_or(CassetteState::Unknown, |c| c.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> DispenserStatus {
        DispenserStatus {
            cassettes: vec![CassetteStatus {
                cassette: CassetteId::UPPER,
                state: CassetteState::NearEnd,
            }],
            error: None,
            notes_in_path: false,
            reject_tray_present: true,
            sensors: Sensors::default(),
        }
    }

    #[test]
    fn readiness_needs_every_condition() {
        assert!(ready().is_ready());
        let mut s = ready();
        s.notes_in_path = true;
        assert!(!s.is_ready());
        let mut s = ready();
        s.error = Some(DeviceError::MotorStop);
        assert!(!s.is_ready());
        let mut s = ready();
        s.reject_tray_present = false;
        assert!(!s.is_ready());
        let mut s = ready();
        s.cassettes[0].state = CassetteState::Missing;
        assert!(!s.is_ready());
        assert_eq!(ready().cassette(CassetteId::LOWER), CassetteState::Unknown);
    }

    #[test]
    fn path_sensors_mean_notes_in_path_but_status_bits_do_not() {
        let mut s = Sensors {
            near_end: true,
            cassette_in_place: true,
            sol: true,
            ..Sensors::default()
        };
        assert!(!s.notes_in_path());
        s.ejt = true;
        assert!(s.notes_in_path());
    }
}
