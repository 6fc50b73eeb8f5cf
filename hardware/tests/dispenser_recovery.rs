//! Power loss in the middle of a dispense and recovery by a new driver instance, over a real
//! pseudo-terminal: the outcome is reported in doubt with the known counts, the journal keeps
//! it across driver restarts, and recovery (status, purge) clears the notes left inside.

mod dispenser_support;

use std::time::Duration;

use dispenser_support::{assert_accounted, config, config_with_journal, lcdm1000, spawn};
use qrcash_hardware::dispenser::lcdm::{LcdmDispenser, LcdmModel};
use qrcash_hardware::dispenser::sim::{Faults, Mechanism, SimConfig, state_file};
use qrcash_hardware::dispenser::{
    CassetteId, DeviceError, DispenseRequest, DispenseResult, Dispenser, DispenserError,
    InDoubtReason, LastDispense, StopReason,
};

const UPPER: CassetteId = CassetteId::UPPER;

fn read_journal(path: &std::path::Path) -> LastDispense {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn power_loss_mid_batch_is_in_doubt_and_a_new_driver_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let sim = lcdm1000(500);
    sim.set_faults(Faults {
        power_loss_after: Some(27),
        ..Faults::default()
    });

    let outcome = {
        let mut d =
            LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
        d.dispense(&DispenseRequest::upper(45)).unwrap()
    };
    // Batch 1 (20) answered; batch 2 (20) cut by the power loss after 7 more notes.
    assert_eq!(
        outcome.result,
        DispenseResult::InDoubt {
            in_flight: DispenseRequest::upper(20),
            reason: InDoubtReason::NoResponse { acknowledged: true }
        }
    );
    assert_eq!(outcome.delivered(UPPER), 20);
    assert_eq!(outcome.max_possibly_delivered_total(), 40);
    let c = sim.counters();
    assert_eq!((c.delivered, c.in_path, c.powered), (27, 1, false));
    assert_accounted(&outcome, 0, &sim);
    assert_eq!(read_journal(&journal).outcome, outcome);

    // Power comes back; the agent restarts and opens a new driver on the same journal.
    sim.power_on();
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    assert!(
        d.last_dispense()
            .is_some_and(LastDispense::blocks_dispensing)
    );
    let commands = sim.counters().link.dispense_commands;
    assert!(matches!(
        d.dispense(&DispenseRequest::upper(5)),
        Err(DispenserError::RecoveryRequired)
    ));
    assert_eq!(
        sim.counters().link.dispense_commands,
        commands,
        "nothing sent"
    );

    let r = d.recover_last().unwrap();
    assert_eq!(
        r.last.as_ref(),
        Some(&outcome),
        "still in doubt, never rounded"
    );
    assert!(r.status_before.notes_in_path, "{r:?}");
    assert!(r.purged && r.purge_error.is_none());
    assert!(r.machine_clear() && r.status_after.is_ready(), "{r:?}");
    let c = sim.counters();
    assert_eq!((c.in_path, c.reject_tray, c.delivered), (0, 1, 27));
    assert!(read_journal(&journal).recovered);

    let o = d.dispense(&DispenseRequest::upper(5)).unwrap();
    assert!(o.is_completed());
    assert_eq!(sim.counters().delivered, 32);
}

#[test]
fn power_loss_survives_a_simulator_restart_through_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let state = dir.path().join("sim.json");
    let sim_config = SimConfig {
        state_file: Some(state.clone()),
        ..SimConfig::lcdm1000(100)
    };
    let sim = spawn(SimConfig {
        faults: Faults {
            power_loss_after: Some(3),
            ..Faults::default()
        },
        ..sim_config.clone()
    });
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    let outcome = d.dispense(&DispenseRequest::upper(10)).unwrap();
    assert!(outcome.is_in_doubt(), "{outcome:?}");
    assert_eq!(outcome.delivered_total(), 0);
    assert_eq!(outcome.max_possibly_delivered_total(), 10);
    drop(d);
    drop(sim);

    // What the dead device's state file says.
    let saved: Mechanism = state_file::load(&state).unwrap().unwrap();
    assert_eq!(
        (saved.delivered(), saved.in_path, saved.powered),
        (3, 1, false)
    );
    assert_eq!(saved.cassettes[0].notes, 96);

    // A new simulator (new pty) from the same state, a new driver from the same journal.
    let sim = spawn(sim_config);
    let c = sim.counters();
    assert_eq!((c.delivered, c.in_path, c.powered), (3, 1, true));
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    assert_eq!(d.last_dispense().map(|l| &l.outcome), Some(&outcome));
    let r = d.recover_last().unwrap();
    assert!(
        r.status_before.notes_in_path && r.purged && r.machine_clear(),
        "{r:?}"
    );
    assert_eq!(sim.counters().reject_tray, 1);
    drop(sim);
    let saved = state_file::load(&state).unwrap().unwrap();
    assert_eq!((saved.in_path, saved.reject_tray), (0, 1));
}

#[test]
fn journal_says_in_doubt_while_a_batch_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let mut sim_config = SimConfig::lcdm1000(100);
    sim_config.note_interval = Duration::from_millis(20);
    sim_config.ack_timeout = Duration::from_millis(150);
    let sim = qrcash_hardware::dispenser::sim::Simulator::spawn(sim_config).unwrap();
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    let worker = std::thread::spawn(move || d.dispense(&DispenseRequest::upper(30)).unwrap());

    // Mid first batch: if the host died now, the journal must already say "in doubt".
    assert!(sim.wait_for(Duration::from_secs(3), |c| c.delivered >= 3));
    let during = read_journal(&journal);
    assert!(!during.recovered);
    assert_eq!(
        during.outcome.result,
        DispenseResult::InDoubt {
            in_flight: DispenseRequest::upper(20),
            reason: InDoubtReason::Interrupted
        }
    );
    assert_eq!(during.outcome.delivered_total(), 0);

    let outcome = worker.join().unwrap();
    assert!(outcome.is_completed());
    assert_eq!(read_journal(&journal).outcome, outcome);
}

#[test]
fn interrupted_record_from_a_crashed_driver_blocks_until_recovered() {
    // The journal a crash would leave behind, written by hand.
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let sim = lcdm1000(100);
    let record = LastDispense {
        outcome: qrcash_hardware::dispenser::DispenseOutcome {
            requested: DispenseRequest::upper(30),
            cassettes: vec![qrcash_hardware::dispenser::CassetteTally {
                picked: 20,
                exited: 20,
                state: qrcash_hardware::dispenser::CassetteState::Normal,
                ..qrcash_hardware::dispenser::CassetteTally::new(UPPER, 30)
            }],
            result: DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper(10),
                reason: InDoubtReason::Interrupted,
            },
        },
        recovered: false,
    };
    std::fs::write(&journal, serde_json::to_vec(&record).unwrap()).unwrap();
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    assert!(matches!(
        d.dispense(&DispenseRequest::upper(1)),
        Err(DispenserError::RecoveryRequired)
    ));
    let r = d.recover_last().unwrap();
    // Path clear on this device, but the doubt alone is reason enough to purge.
    assert!(!r.status_before.notes_in_path);
    assert!(r.purged && r.machine_clear());
    assert_eq!(r.last, Some(record.outcome));
    assert!(
        d.dispense(&DispenseRequest::upper(1))
            .unwrap()
            .is_completed()
    );
}

#[test]
fn without_a_journal_the_device_itself_refuses_until_purged() {
    let sim = lcdm1000(100);
    sim.set_faults(Faults {
        power_loss_after: Some(2),
        ..Faults::default()
    });
    let mut d = LcdmDispenser::open(config(&sim, LcdmModel::Lcdm1000)).unwrap();
    assert!(
        d.dispense(&DispenseRequest::upper(5))
            .unwrap()
            .is_in_doubt()
    );
    drop(d);
    sim.power_on();

    // A new driver with no journal knows nothing of the last dispense...
    let mut d = LcdmDispenser::open(config(&sim, LcdmModel::Lcdm1000)).unwrap();
    assert!(d.last_dispense().is_none());
    // ...but the device will not pay with notes in the path.
    let o = d.dispense(&DispenseRequest::upper(5)).unwrap();
    assert_eq!(
        o.result,
        DispenseResult::Stopped {
            reason: StopReason::Device {
                error: DeviceError::JamAtChk
            }
        }
    );
    assert_eq!(o.delivered_total(), 0);
    assert_eq!(sim.counters().delivered, 2);
    let r = d.recover_last().unwrap();
    assert!(
        r.status_before.notes_in_path && r.purged && r.machine_clear(),
        "{r:?}"
    );
    assert!(
        d.dispense(&DispenseRequest::upper(5))
            .unwrap()
            .is_completed()
    );
    assert_eq!(sim.counters().delivered, 7);
}

#[test]
fn device_vanishing_mid_dispense_is_in_doubt() {
    let mut sim_config = SimConfig::lcdm1000(100);
    sim_config.note_interval = Duration::from_millis(20);
    let sim = qrcash_hardware::dispenser::sim::Simulator::spawn(sim_config).unwrap();
    let mut d = LcdmDispenser::open(config(&sim, LcdmModel::Lcdm1000)).unwrap();
    let worker = std::thread::spawn(move || d.dispense(&DispenseRequest::upper(15)).unwrap());
    assert!(sim.wait_for(Duration::from_secs(3), |c| c.delivered >= 2));
    let delivered = sim.shutdown().delivered();
    let o = worker.join().unwrap();
    assert!(o.is_in_doubt(), "{o:?}");
    assert!(o.delivered_total() <= delivered && delivered <= o.max_possibly_delivered_total());
}
