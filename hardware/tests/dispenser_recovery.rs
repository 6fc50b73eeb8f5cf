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
        d.dispense("order-test", &DispenseRequest::upper(45))
            .unwrap()
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
        d.dispense("order-test", &DispenseRequest::upper(5)),
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
    assert_eq!(
        c.link.power_ups, 1,
        "the device's noise at power-up was on the line"
    );
    assert!(read_journal(&journal).recovered);

    let o = d
        .dispense("order-test", &DispenseRequest::upper(5))
        .unwrap();
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
    let outcome = d
        .dispense("order-test", &DispenseRequest::upper(10))
        .unwrap();
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
    let worker = std::thread::spawn(move || {
        d.dispense("order-test", &DispenseRequest::upper(30))
            .unwrap()
    });

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
        reference: Some("order-crashed".into()),
        handed_at_ms: None,
        written_at_ms: 0,
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
        d.dispense("order-test", &DispenseRequest::upper(1)),
        Err(DispenserError::RecoveryRequired)
    ));
    let r = d.recover_last().unwrap();
    // Path clear on this device, but the doubt alone is reason enough to purge.
    assert!(!r.status_before.notes_in_path);
    assert!(r.purged && r.machine_clear());
    assert_eq!(r.last, Some(record.outcome));
    assert!(
        d.dispense("order-test", &DispenseRequest::upper(1))
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
        d.dispense("order-test", &DispenseRequest::upper(5))
            .unwrap()
            .is_in_doubt()
    );
    drop(d);
    sim.power_on();

    // A new driver with no journal knows nothing of the last dispense...
    let mut d = LcdmDispenser::open(config(&sim, LcdmModel::Lcdm1000)).unwrap();
    assert!(d.last_dispense().is_none());
    // ...but the device will not pay with notes in the path.
    let o = d
        .dispense("order-test", &DispenseRequest::upper(5))
        .unwrap();
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
        d.dispense("order-test", &DispenseRequest::upper(5))
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
    let worker = std::thread::spawn(move || {
        d.dispense("order-test", &DispenseRequest::upper(15))
            .unwrap()
    });
    assert!(sim.wait_for(Duration::from_secs(3), |c| c.delivered >= 2));
    let delivered = sim.shutdown().delivered();
    let o = worker.join().unwrap();
    assert!(o.is_in_doubt(), "{o:?}");
    assert!(o.delivered_total() <= delivered && delivered <= o.max_possibly_delivered_total());
}

/// What a driver killed right after sending a batch leaves behind: its journal record (the
/// batch in flight, named by the order's reference) and the command frame on the line,
/// which the device executes and answers with nobody reading.
fn kill_after_sending(
    sim: &qrcash_hardware::dispenser::sim::SimHandle,
    journal: &std::path::Path,
    reference: &str,
    notes: u8,
) {
    use qrcash_hardware::dispenser::lcdm::message::{BatchCount, Command, Slot};
    use qrcash_hardware::dispenser::{CassetteTally, DispenseOutcome};
    use std::io::Write as _;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = LastDispense {
        reference: Some(reference.into()),
        handed_at_ms: Some(now_ms),
        written_at_ms: now_ms,
        outcome: DispenseOutcome {
            requested: DispenseRequest::upper(u32::from(notes)),
            cassettes: vec![CassetteTally::new(UPPER, u32::from(notes))],
            result: DispenseResult::InDoubt {
                in_flight: DispenseRequest::upper(u32::from(notes)),
                reason: InDoubtReason::Interrupted,
            },
        },
        recovered: false,
    };
    std::fs::write(journal, serde_json::to_vec(&record).unwrap()).unwrap();
    let mut port = serialport::new(sim.port_path(), 9600)
        .timeout(Duration::from_millis(100))
        .open()
        .unwrap();
    let command = Command::Dispense {
        slot: Slot::Upper,
        count: BatchCount::new(u32::from(notes)).unwrap(),
    };
    port.write_all(&command.encode()).unwrap();
    port.flush().unwrap();
    // The port closes with the "process": the device's ACK and answer stay unread.
}

#[test]
fn the_devices_late_answer_to_the_batch_in_flight_is_read_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let sim = lcdm1000(100);
    kill_after_sending(&sim, &journal, "order-19", 9);
    // The device finishes and its answer waits on the line (it repeats it unanswered).
    assert!(sim.wait_for(Duration::from_secs(5), |c| c.delivered == 9));

    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    let r = d.recover_last().unwrap();
    assert!(r.late_answer, "{r:?}");
    assert_eq!(r.last_reference.as_deref(), Some("order-19"));
    assert!(r.handed_at_ms.is_some());
    let last = r.last_for("order-19").expect("attributed by its reference");
    assert_eq!(last.result, DispenseResult::Completed);
    assert_eq!(last.delivered_total(), 9);
    assert_eq!(
        r.last_for("order-20"),
        None,
        "never by another order's identity"
    );
    // The record now says what the device said, and the machine is usable again.
    let record = read_journal(&journal);
    assert_eq!(
        (record.outcome.delivered_total(), record.recovered),
        (9, true)
    );
    assert!(r.machine_clear());
    assert!(
        d.dispense("order-20", &DispenseRequest::upper(1))
            .unwrap()
            .is_completed()
    );
    assert_eq!(sim.counters().delivered, 10);
}

#[test]
fn a_late_answer_still_on_its_way_is_waited_for_within_the_dispense_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let mut config = SimConfig::lcdm1000(100);
    // Slow enough that the restarted driver is listening before the device answers.
    config.note_interval = Duration::from_millis(40);
    config.ack_timeout = Duration::from_millis(150);
    let sim = qrcash_hardware::dispenser::sim::Simulator::spawn(config).unwrap();
    kill_after_sending(&sim, &journal, "order-7", 7);
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    let r = d.recover_last().unwrap();
    assert!(r.late_answer, "{r:?}");
    assert_eq!(r.last_for("order-7").map(|o| o.delivered_total()), Some(7));
    assert_eq!(sim.counters().delivered, 7);
}

#[test]
fn without_an_answer_the_batch_in_flight_stays_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dispenser.json");
    let sim = lcdm1000(100);
    sim.power_off();
    kill_after_sending(&sim, &journal, "order-3", 3);
    // The dead device swallows the command before power comes back.
    std::thread::sleep(Duration::from_millis(300));
    sim.power_on();
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    let started = std::time::Instant::now();
    let r = d.recover_last().unwrap();
    assert!(!r.late_answer);
    let last = r.last_for("order-3").unwrap();
    assert!(last.is_in_doubt());
    assert_eq!(
        (last.delivered_total(), last.max_possibly_delivered_total()),
        (0, 3)
    );
    // It listened no longer than one dispense timeout after the command was sent.
    assert!(started.elapsed() < dispenser_support::DISPENSE_TIMEOUT * 3);
    assert_eq!(sim.counters().delivered, 0);
}
