//! Errors: faults the device reports (`DeviceError`) and failures of a driver call
//! (`DispenserError`).
//!
//! `DeviceError` is data (it is journalled inside outcomes); `DispenserError` is what a call
//! returns when it could not produce an outcome. The byte values of the LCDM error codes live
//! in `lcdm::message`, not here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::request::CassetteId;

/// A fault reported by the dispenser mechanism.
///
/// Names follow the sensors of the Puloon LCDM family; other dispensers map their codes onto
/// the closest variant. Each message says what an operator should do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceError {
    /// The cassette could not pick a note.
    #[error("pickup error: check the cassette feed and the notes' condition, then purge")]
    PickupError,
    /// A note jammed at the pick (CHK1/CHK2) sensors.
    #[error("jam at the pick sensors (CHK1/CHK2): clear the note path, then purge")]
    JamAtChk,
    /// More notes in the path than the mechanism can hold.
    #[error("note overflow: clear the note path, then purge")]
    Overflow,
    /// A note jammed at the EXIT or EJT sensor.
    #[error("jam at the EXIT or EJT sensor: clear the exit, then purge")]
    JamAtExitOrEjt,
    /// A note jammed at the diverter (DIV) sensor.
    #[error("jam at the diverter (DIV): clear the diverter, then purge")]
    JamAtDiv,
    /// The second code the manual lists for a jam at the diverter (DIV) sensor.
    #[error("jam at the diverter (DIV, alternate code): clear the diverter, then purge")]
    JamAtDivAlt,
    /// The device did not understand the command (driver bug or wrong model configured).
    #[error("undefined command: check that the configured model matches the device")]
    UndefinedCommand,
    /// The cassette ran out of notes.
    #[error("{cassette} is empty: refill it")]
    BillEnd {
        /// The empty cassette.
        cassette: CassetteId,
    },
    /// Counting error between the CHK3/CHK4 sensors (LCDM-2000 lower path).
    #[error("counting error at CHK3/CHK4: purge, then check the lower path")]
    CountingErrorChk34,
    /// A note jammed at the CHK3/CHK4 sensors (LCDM-2000 lower path).
    #[error("jam at CHK3/CHK4: clear the lower note path, then purge")]
    JamAtChk34,
    /// The requested note count was refused (out of range).
    #[error("note request error: the device refused the requested count")]
    NoteRequestError,
    /// Counting error between the DIV and EJT sensors.
    #[error("counting error between DIV and EJT: purge and reconcile the cassette")]
    CountingErrorDivEjt,
    /// Counting error between the EJT and EXIT sensors.
    #[error("counting error between EJT and EXIT: purge and reconcile the cassette")]
    CountingErrorEjtExit,
    /// The reject tray is missing or not seated.
    #[error("reject tray not recognised: seat the reject tray")]
    RejectTrayNotRecognised,
    /// The transport motor stopped.
    #[error("motor stop: call service")]
    MotorStop,
    /// A note took too long from DIV to EJT.
    #[error("timeout from DIV to EJT: clear the note path, then purge")]
    TimeoutDivToEjt,
    /// Too many notes were rejected in one dispense.
    #[error("over reject: too many notes rejected, check note quality in the cassette")]
    OverReject,
    /// The cassette is missing or not seated.
    #[error("{cassette} not recognised: seat the cassette")]
    CassetteNotRecognised {
        /// The missing cassette.
        cassette: CassetteId,
    },
    /// The dispense took longer than the device allows.
    #[error("dispensing timeout: purge, then check the mechanism")]
    DispensingTimeout,
    /// A note jammed at the EJT sensor.
    #[error("jam at EJT: clear the eject path, then purge")]
    JamAtEjt,
    /// Diverter solenoid or SOL sensor failure.
    #[error("diverter solenoid or SOL sensor error: call service")]
    DiverterSolenoidOrSolSensor,
    /// SOL sensor failure.
    #[error("SOL sensor error: call service")]
    SolSensor,
    /// The purge itself failed (jam at the diverter).
    #[error("purge error (jam at DIV): clear the diverter by hand")]
    PurgeError,
    /// An error code this driver does not know.
    #[error("unrecognised device error code {code:#04x}: see the device manual")]
    Unrecognised {
        /// The raw error byte.
        code: u8,
    },
}

impl DeviceError {
    /// True when the fault leaves notes inside the machine that must be purged.
    pub fn leaves_notes_in_path(&self) -> bool {
        matches!(
            self,
            DeviceError::JamAtChk
                | DeviceError::Overflow
                | DeviceError::JamAtExitOrEjt
                | DeviceError::JamAtDiv
                | DeviceError::JamAtDivAlt
                | DeviceError::JamAtChk34
                | DeviceError::CountingErrorChk34
                | DeviceError::CountingErrorDivEjt
                | DeviceError::CountingErrorEjtExit
                | DeviceError::MotorStop
                | DeviceError::TimeoutDivToEjt
                | DeviceError::JamAtEjt
                | DeviceError::DispensingTimeout
                | DeviceError::PurgeError
                | DeviceError::Unrecognised { .. }
        )
    }
}

/// Why a driver call failed without producing an outcome.
///
/// For `Dispenser::dispense` an `Err` is a promise: no dispense command that the device could
/// have executed was sent, so no note moved. Anything else is an `Ok(DispenseOutcome)`.
#[derive(Debug, thiserror::Error)]
pub enum DispenserError {
    /// The request cannot be served by this dispenser (nothing was sent).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The configuration is unusable.
    #[error("invalid dispenser configuration: {0}")]
    Config(String),
    /// The port opened, but no device of the configured model answers on it: nothing at
    /// the other end, no power, or another model (an LCDM-4000 does not answer the
    /// LCDM-1000/2000 protocol's ID 0x50).
    #[error(
        "no {model} answers on {path}: {source}; check power and cabling, and that the configured model is the device's (an LCDM-4000 does not speak the LCDM-1000/2000 protocol)"
    )]
    NotAnswering {
        /// Port path.
        path: String,
        /// The configured model.
        model: String,
        /// How the identifying commands failed.
        #[source]
        source: Box<DispenserError>,
    },
    /// The serial port could not be opened or configured.
    #[error(
        "cannot open serial port {path}: {source}; check the path, permissions and that no other process holds it"
    )]
    Open {
        /// Port path from the configuration.
        path: String,
        /// What the OS said.
        #[source]
        source: serialport::Error,
    },
    /// Reading or writing the serial port failed.
    #[error("serial I/O on {path} failed: {source}; check the cable and the USB adapter")]
    Io {
        /// Port path.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The device answered every send of the command with NAK: it did not execute it.
    #[error(
        "the device refused the command {sends} times (NAK); nothing was executed; check line settings and cabling"
    )]
    CommandRejected {
        /// How many times the command was sent.
        sends: u8,
    },
    /// The device never acknowledged the command.
    #[error("no answer from the dispenser after {sends} attempts; check power and cabling")]
    NoAcknowledge {
        /// How many times the command was sent.
        sends: u8,
    },
    /// The device acknowledged (or may have received) the command but sent no response.
    #[error(
        "no response from the dispenser (acknowledged: {acknowledged}); check power and cabling"
    )]
    NoResponse {
        /// Whether the device had acknowledged the command.
        acknowledged: bool,
    },
    /// Every copy of the response was damaged.
    #[error(
        "the dispenser's response stayed unreadable after {naks} NAKs; check cabling and line settings"
    )]
    UnreadableResponse {
        /// NAKs sent for damaged copies.
        naks: u8,
    },
    /// The response frame was intact but its contents made no sense.
    #[error("malformed response from the dispenser: {0}")]
    MalformedResponse(String),
    /// The device executed the command and reported a fault.
    #[error("dispenser fault: {0}")]
    Device(DeviceError),
    /// The last dispense is in doubt or left notes in the machine; `recover_last` must run
    /// before the next dispense.
    #[error(
        "the last dispense needs recovery (in doubt or notes left in the machine); call recover_last first"
    )]
    RecoveryRequired,
    /// The last-dispense journal could not be read or written.
    #[error("dispense journal {path}: {source}; check the disk and the file's permissions")]
    Journal {
        /// Journal path from the configuration.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_error_json_is_tagged() {
        let e = DeviceError::BillEnd {
            cassette: CassetteId::LOWER,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"kind":"bill_end","cassette":2}"#);
        assert_eq!(serde_json::from_str::<DeviceError>(&json).unwrap(), e);
        let e = DeviceError::Unrecognised { code: 0x99 };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<DeviceError>(&json).unwrap(), e);
    }

    #[test]
    fn messages_tell_the_operator_what_to_do() {
        let msg = DeviceError::CassetteNotRecognised {
            cassette: CassetteId::UPPER,
        }
        .to_string();
        assert!(
            msg.contains("cassette 1 (upper)") && msg.contains("seat"),
            "{msg}"
        );
        assert!(DeviceError::JamAtChk.leaves_notes_in_path());
        assert!(
            !DeviceError::BillEnd {
                cassette: CassetteId::UPPER
            }
            .leaves_notes_in_path()
        );
    }
}
