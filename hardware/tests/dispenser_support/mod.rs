//! Shared set-up for the dispenser end-to-end suites: a fast simulator and a driver with
//! short timeouts, talking over a real pseudo-terminal.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser, LcdmModel};
use qrcash_hardware::dispenser::sim::{SimConfig, SimHandle, Simulator};

/// Dispense response timeout used by the suites; a silent device costs this much.
pub const DISPENSE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A simulator that moves notes quickly.
pub fn spawn(mut config: SimConfig) -> SimHandle {
    config.note_interval = Duration::from_millis(2);
    config.ack_timeout = Duration::from_millis(150);
    Simulator::spawn(config).expect("simulator starts")
}

pub fn lcdm1000(notes: u32) -> SimHandle {
    spawn(SimConfig::lcdm1000(notes))
}

pub fn lcdm2000(upper: u32, lower: u32) -> SimHandle {
    spawn(SimConfig::lcdm2000(upper, lower))
}

/// Driver settings for `sim` with short timeouts.
pub fn config(sim: &SimHandle, model: LcdmModel) -> LcdmConfig {
    LcdmConfig {
        ack_timeout_ms: 100,
        response_timeout_ms: 500,
        dispense_timeout_ms: DISPENSE_TIMEOUT.as_millis() as u64,
        batch_pause_ms: 5,
        // The simulator's ACK wait (150 ms) and a margin.
        repeat_wait_ms: 250,
        ..LcdmConfig::new(sim.port_path(), model)
    }
}

/// Same, with a journal file.
pub fn config_with_journal(sim: &SimHandle, model: LcdmModel, journal: &Path) -> LcdmConfig {
    LcdmConfig {
        journal: Some(journal.to_path_buf()),
        ..config(sim, model)
    }
}

/// Opens the real driver on the simulator's pty path.
pub fn open(sim: &SimHandle, model: LcdmModel) -> LcdmDispenser {
    LcdmDispenser::open(config(sim, model)).expect("driver opens the pty")
}

/// The invariant behind "no cash without an order": the notes that physically left the
/// simulated machine during a dispense are exactly the reported count, or, when the outcome
/// is in doubt, between the known count and the known count plus the batch in flight.
pub fn assert_accounted(
    outcome: &qrcash_hardware::dispenser::DispenseOutcome,
    delivered_before: u64,
    sim: &SimHandle,
) {
    let physical = sim.counters().delivered - delivered_before;
    if outcome.is_in_doubt() {
        assert!(
            outcome.delivered_total() <= physical
                && physical <= outcome.max_possibly_delivered_total(),
            "in doubt: known {} ≤ physical {physical} ≤ max {} violated: {outcome:?}",
            outcome.delivered_total(),
            outcome.max_possibly_delivered_total()
        );
    } else {
        assert_eq!(
            outcome.delivered_total(),
            physical,
            "reported and physical notes differ: {outcome:?}"
        );
    }
    assert!(
        physical <= outcome.requested.total(),
        "more notes left than were ordered: {physical} > {}",
        outcome.requested.total()
    );
}
