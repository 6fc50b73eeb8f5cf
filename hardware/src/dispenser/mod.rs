//! Cash dispensers: the interface the agent programs against, the LCDM driver and the simulator.
//!
//! - [`Dispenser`] is the trait the agent calls (synchronously, from `spawn_blocking`).
//! - [`request`], [`outcome`], [`status`] and [`error`] are its vocabulary; outcomes are
//!   serde-serialisable so the agent can journal them.
//! - [`lcdm`] drives a Puloon LCDM-1000/2000 over a serial port.
//! - [`sim`] plays the device side of the LCDM protocol on a pseudo-terminal, with faults.
//! - [`journal`] keeps the driver's record of its last dispense across restarts.
//! - [`reopen`] opens the driver when first needed and again after its port failed.
//!
//! The money rule throughout: what the device did is reported as counted, and when it cannot
//! tell, the outcome is `InDoubt` — never rounded to success or failure.

pub mod error;
pub mod journal;
pub mod lcdm;
pub mod outcome;
pub mod reopen;
pub mod request;
pub mod sim;
pub mod status;

pub use error::{DeviceError, DispenserError};
pub use journal::LastDispense;

/// Environment variable naming a step at which the process aborts itself, for crash tests of
/// the whole dispense path (the agent reads it too). The driver's steps:
/// `after_command` (a batch's command frame is on the serial line, its answer not yet read)
/// and `between_batches` (a batch was answered and recorded, the next not yet sent).
pub const CRASH_ENV: &str = "QRCASH_AGENT_CRASH_AT";

/// Aborts the process when [`CRASH_ENV`] names `step` (crash tests only; unset in service).
pub fn crash_point(step: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == step) {
        tracing::error!(step, "crash hook: aborting the process");
        std::process::abort();
    }
}
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

    /// Dispenses notes to the customer. `reference` names the dispense (the agent passes its
    /// order id): the driver's record of the dispense carries it, and `recover_last`
    /// returns it, so that counts are attributed to an order by identity after a restart.
    ///
    /// `Err` promises that no note moved (invalid request, recovery pending, port unusable,
    /// command refused). Every other case is `Ok`, with the counts the device reported and a
    /// result that is `Completed`, `Stopped` (exact counts) or `InDoubt` (unknown fate of the
    /// batch in flight). After an outcome that `needs_recovery`, further dispenses fail with
    /// `RecoveryRequired` until `recover_last` has cleared the machine.
    fn dispense(
        &mut self,
        reference: &str,
        request: &DispenseRequest,
    ) -> Result<DispenseOutcome, DispenserError>;

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
    /// The last outcome is reported as known (from memory or the driver's journal) with the
    /// reference it was dispensed under. An in-doubt outcome stays in doubt, since the LCDM
    /// cannot recount delivered notes, unless the device's own answer to the batch in flight
    /// is still waiting on the line after a restart: that answer settles the batch.
    fn recover_last(&mut self) -> Result<Recovery, DispenserError>;
}
