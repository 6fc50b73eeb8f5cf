//! Cash dispensers: the interface the agent programs against, the LCDM driver and the simulator.
//!
//! - [`Dispenser`] is the trait the agent calls (synchronously, from `spawn_blocking`).
//! - [`request`], [`outcome`], [`status`] and [`error`] are its vocabulary; outcomes are
//!   serde-serialisable so the agent can journal them.
//! - [`lcdm`] drives a Puloon LCDM-1000/2000 over a serial port.
//! - [`sim`] plays the device side of the LCDM protocol on a pseudo-terminal, with faults.
//! - [`journal`] keeps the driver's record of its last dispense across restarts.
//!
//! The money rule throughout: what the device did is reported as counted, and when it cannot
//! tell, the outcome is `InDoubt` — never rounded to success or failure.

pub mod error;
pub mod journal;
pub mod lcdm;
pub mod outcome;
pub mod request;
pub mod sim;
pub mod status;

pub use error::{DeviceError, DispenserError};
pub use journal::LastDispense;
pub use outcome::{
    CassetteTally, DispenseOutcome, DispenseResult, InDoubtReason, Recovery, StopReason,
    TestDispenseOutcome,
};
pub use request::{CassetteId, DispenseRequest};
pub use status::{CassetteState, CassetteStatus, DispenserStatus, Sensors};

/// A cash dispenser, as the agent sees it.
///
/// Calls block until the device has answered (a dispense can take a minute); call them from
/// `tokio::task::spawn_blocking`. One call at a time: the methods take `&mut self`.
pub trait Dispenser: Send {
    /// Number of cassettes (1 for an LCDM-1000, 2 for an LCDM-2000).
    fn cassette_count(&self) -> usize;

    /// Reads the device status.
    fn status(&mut self) -> Result<DispenserStatus, DispenserError>;

    /// Dispenses notes to the customer.
    ///
    /// `Err` promises that no note moved (invalid request, recovery pending, port unusable,
    /// command refused). Every other case is `Ok`, with the counts the device reported and a
    /// result that is `Completed`, `Stopped` (exact counts) or `InDoubt` (unknown fate of the
    /// batch in flight). After an outcome that `needs_recovery`, further dispenses fail with
    /// `RecoveryRequired` until `recover_last` has cleared the machine.
    fn dispense(&mut self, request: &DispenseRequest) -> Result<DispenseOutcome, DispenserError>;

    /// Clears the note path into the reject tray.
    fn purge(&mut self) -> Result<(), DispenserError>;

    /// Moves one note from `cassette` into the reject tray, to check the mechanism.
    fn test_dispense(
        &mut self,
        cassette: CassetteId,
    ) -> Result<TestDispenseOutcome, DispenserError>;

    /// Answers "what happened to the last dispense?" and brings the machine back to a clean
    /// state: reads the status, purges when notes may be inside, reads the status again.
    ///
    /// The last outcome is reported as known (from memory or the driver's journal); an
    /// in-doubt outcome stays in doubt, since the LCDM cannot recount delivered notes.
    fn recover_last(&mut self) -> Result<Recovery, DispenserError>;
}
