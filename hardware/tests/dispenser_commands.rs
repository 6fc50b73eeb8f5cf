//! Every LCDM command, driven by the real driver against the simulator over a pseudo-terminal.

mod dispenser_support;

use dispenser_support::{config, config_with_journal, lcdm1000, lcdm2000, open, spawn};
use qrcash_hardware::dispenser::lcdm::{CombinedFieldOrder, LcdmConfig, LcdmDispenser, LcdmModel};
use qrcash_hardware::dispenser::sim::{Faults, SimConfig};
use qrcash_hardware::dispenser::{
    CassetteId, CassetteState, DispenseRequest, DispenseResult, Dispenser, DispenserError,
};

const UPPER: CassetteId = CassetteId::UPPER;
const LOWER: CassetteId = CassetteId::LOWER;

#[test]
fn status_of_a_fresh_lcdm1000() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let s = d.status().unwrap();
    assert!(s.is_ready(), "{s:?}");
    assert_eq!(s.cassettes.len(), 1);
    assert_eq!(s.cassette(UPPER), CassetteState::Normal);
    assert!(!s.notes_in_path);
    assert_eq!(sim.counters().link.commands, 1);
}

#[test]
fn rom_version() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    assert_eq!(d.rom_version().unwrap(), "LCDM-SIM 1.0");
}

#[test]
fn small_dispense_delivers_exactly_the_request() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(7))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    let t = o.tally(UPPER).unwrap();
    assert_eq!((t.requested, t.picked, t.exited, t.rejected), (7, 7, 7, 0));
    assert_eq!(t.state, CassetteState::Normal);
    let c = sim.counters();
    assert_eq!(c.delivered, 7);
    assert_eq!(c.notes_left, vec![493]);
    assert_eq!(c.link.dispense_commands, 1);
}

#[test]
fn large_dispense_is_batched_by_twenty_and_counts_accumulate() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(47))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    assert_eq!(o.delivered(UPPER), 47);
    let c = sim.counters();
    assert_eq!(c.delivered, 47);
    assert_eq!(c.link.dispense_commands, 3, "20 + 20 + 7");
}

#[test]
fn batch_size_is_configurable() {
    let sim = lcdm1000(500);
    let mut d = LcdmDispenser::open(LcdmConfig {
        max_notes_per_batch: 60,
        ..dispenser_support::config(&sim, LcdmModel::Lcdm1000)
    })
    .unwrap();
    let o = d
        .dispense("order-test", &DispenseRequest::upper(60))
        .unwrap();
    assert!(o.is_completed());
    assert_eq!(sim.counters().link.dispense_commands, 1);
}

#[test]
fn rejected_doubles_are_reported_and_replaced() {
    let sim = lcdm1000(500);
    sim.set_faults(Faults {
        reject_next: 3,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(10))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    let t = o.tally(UPPER).unwrap();
    assert_eq!((t.picked, t.exited, t.rejected), (13, 10, 3));
    assert!(!o.needs_recovery());
    let c = sim.counters();
    assert_eq!((c.delivered, c.reject_tray), (10, 3));
}

#[test]
fn purge_on_a_clear_path_succeeds() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    d.purge().unwrap();
    assert_eq!(sim.counters().reject_tray, 0);
}

#[test]
fn test_dispense_sends_one_note_to_the_reject_tray() {
    let sim = lcdm2000(100, 100);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    for cassette in [UPPER, LOWER] {
        let t = d
            .test_dispense(cassette)
            .unwrap_or_else(|e| panic!("{cassette}: {e:?} {:?}", sim.counters()));
        assert_eq!(t.error, None);
        assert_eq!(t.tally.cassette, cassette);
        assert_eq!(
            (t.tally.picked, t.tally.exited, t.tally.rejected),
            (1, 0, 1)
        );
    }
    let c = sim.counters();
    assert_eq!(c.delivered, 0, "a test dispense never pays out");
    assert_eq!(c.reject_tray, 2);
    assert_eq!(c.notes_left, vec![99, 99]);
}

#[test]
fn lcdm2000_lower_cassette_alone() {
    let sim = lcdm2000(100, 100);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(0, 5))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    assert_eq!((o.delivered(UPPER), o.delivered(LOWER)), (0, 5));
    assert_eq!(sim.counters().delivered_per_cassette, vec![0, 5]);
}

#[test]
fn lcdm2000_combined_batches_both_cassettes() {
    let sim = lcdm2000(100, 100);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(25, 42))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    assert_eq!((o.delivered(UPPER), o.delivered(LOWER)), (25, 42));
    let c = sim.counters();
    assert_eq!(c.delivered_per_cassette, vec![25, 42]);
    // (20,20) (5,20) (0,2)
    assert_eq!(c.link.dispense_commands, 3);
}

#[test]
fn combined_field_order_per_sensor_when_both_sides_agree() {
    let sim = spawn(SimConfig {
        combined_field_order: CombinedFieldOrder::PerSensor,
        ..SimConfig::lcdm2000(100, 100)
    });
    let mut d = LcdmDispenser::open(LcdmConfig {
        combined_field_order: CombinedFieldOrder::PerSensor,
        ..dispenser_support::config(&sim, LcdmModel::Lcdm2000)
    })
    .unwrap();
    sim.set_faults(Faults {
        reject_next: 1,
        ..Faults::default()
    });
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(3, 9))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    let (u, l) = (o.tally(UPPER).unwrap(), o.tally(LOWER).unwrap());
    assert_eq!((u.picked, u.exited, u.rejected), (4, 3, 1));
    assert_eq!((l.picked, l.exited, l.rejected), (9, 9, 0));
}

#[test]
fn mismatched_field_order_is_caught_not_paid_twice() {
    // Driver and device disagree on the 0x56 layout: the counts read back are wrong, and the
    // driver must notice (exit count differs from the batch) instead of carrying on.
    let sim = spawn(SimConfig {
        combined_field_order: CombinedFieldOrder::PerSensor,
        ..SimConfig::lcdm2000(100, 100)
    });
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(3, 9))
        .unwrap();
    assert!(matches!(o.result, DispenseResult::Stopped { .. }), "{o:?}");
    assert_eq!(sim.counters().delivered, 12);
    assert_eq!(sim.counters().link.dispense_commands, 1);
}

#[test]
fn near_end_is_reported_in_status_and_outcome() {
    let sim = lcdm2000(55, 55);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    assert_eq!(d.status().unwrap().cassette(UPPER), CassetteState::Normal);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(10, 10))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    assert_eq!(o.tally(UPPER).unwrap().state, CassetteState::NearEnd);
    assert_eq!(o.tally(LOWER).unwrap().state, CassetteState::NearEnd);
    let s = d.status().unwrap();
    assert_eq!(s.cassette(UPPER), CassetteState::NearEnd);
    assert_eq!(s.cassette(LOWER), CassetteState::NearEnd);
    assert!(s.is_ready(), "near end still dispenses");
}

#[test]
fn invalid_requests_send_nothing() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    for request in [
        DispenseRequest::default(),
        DispenseRequest::upper(0),
        DispenseRequest::upper_lower(1, 1),
    ] {
        let err = d.dispense("order-test", &request).unwrap_err();
        assert!(matches!(err, DispenserError::InvalidRequest(_)), "{err}");
    }
    assert!(matches!(
        d.test_dispense(LOWER),
        Err(DispenserError::InvalidRequest(_))
    ));
    assert_eq!(sim.counters().link.commands, 0);
}

#[test]
fn lcdm2000_commands_on_an_lcdm1000_are_undefined() {
    // Misconfiguration: the driver thinks it has two cassettes, the device has one.
    let sim = lcdm1000(100);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(0, 2))
        .unwrap();
    assert_eq!(
        o.result,
        DispenseResult::Stopped {
            reason: qrcash_hardware::dispenser::StopReason::Device {
                error: qrcash_hardware::dispenser::DeviceError::UndefinedCommand
            }
        }
    );
    assert_eq!(sim.counters().delivered, 0);
}

#[test]
fn driver_can_be_reopened_on_the_same_port() {
    let sim = lcdm1000(500);
    {
        let mut d = open(&sim, LcdmModel::Lcdm1000);
        d.dispense("order-test", &DispenseRequest::upper(2))
            .unwrap();
    }
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    assert!(
        d.dispense("order-test", &DispenseRequest::upper(3))
            .unwrap()
            .is_completed()
    );
    assert_eq!(sim.counters().delivered, 5);
}

#[test]
fn outcomes_serialise_for_the_agent_journal() {
    let sim = lcdm1000(500);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(21))
        .unwrap();
    let json = serde_json::to_string(&o).unwrap();
    assert!(json.contains(r#""result":"completed""#), "{json}");
    assert_eq!(
        serde_json::from_str::<qrcash_hardware::dispenser::DispenseOutcome>(&json).unwrap(),
        o
    );
    let s = d.status().unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(
        serde_json::from_str::<qrcash_hardware::dispenser::DispenserStatus>(&json).unwrap(),
        s
    );
}

/// `open_checked` asks the device who it is when the port opens: a line where nothing of the
/// configured family answers (here a dead device; an LCDM-4000 ignores ID 0x50 the same way)
/// is an error naming the port and model within the ACK retries, not a dispense left in
/// doubt after the whole dispense timeout. A driver whose last dispense awaits recovery
/// sends nothing at open: recovery listens for the device's late answer first.
#[test]
fn open_checked_names_a_silent_or_wrong_device_at_once() {
    let sim = lcdm2000(50, 50);
    let mut d = LcdmDispenser::open_checked(config(&sim, LcdmModel::Lcdm2000)).unwrap();
    assert_eq!(d.identify().unwrap().rom_version, "LCDM-SIM 1.0");
    assert_eq!(
        sim.counters().link.commands,
        4,
        "status and ROM version, twice"
    );
    drop(d);

    sim.set_faults(Faults {
        no_answer: true,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let e = LcdmDispenser::open_checked(config(&sim, LcdmModel::Lcdm2000))
        .err()
        .expect("nothing answers");
    assert!(
        matches!(&e, DispenserError::NotAnswering { path, model, .. }
            if path == sim.port_path() && model == "Lcdm2000"),
        "{e}"
    );
    assert!(e.to_string().contains("LCDM-4000"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // The plain open still opens a silent line (the agent's device check reports it).
    assert!(LcdmDispenser::open(config(&sim, LcdmModel::Lcdm2000)).is_ok());

    // A dispense left in doubt: open_checked leaves the line alone for recovery.
    let sim = lcdm1000(50);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.json");
    let mut d =
        LcdmDispenser::open(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal)).unwrap();
    sim.set_faults(Faults {
        power_loss_after: Some(2),
        ..Faults::default()
    });
    let o = d
        .dispense("order-test", &DispenseRequest::upper(5))
        .unwrap();
    assert!(o.is_in_doubt(), "{o:?}");
    drop(d);
    sim.power_on();
    let before = sim.counters().link.commands;
    let d = LcdmDispenser::open_checked(config_with_journal(&sim, LcdmModel::Lcdm1000, &journal))
        .unwrap();
    assert!(d.last_dispense().is_some_and(|l| l.blocks_dispensing()));
    assert_eq!(sim.counters().link.commands, before);
}

/// The simulator at a real device's speed (about 7 notes a second) and the driver with the
/// shipped timeouts: a two-cassette dispense of 15 notes takes its real time and is exact.
#[test]
fn a_dispense_at_the_devices_real_speed_with_the_shipped_settings() {
    let sim = qrcash_hardware::dispenser::sim::Simulator::spawn(SimConfig {
        note_interval: std::time::Duration::from_millis(143),
        ..SimConfig::lcdm2000(100, 100)
    })
    .unwrap();
    let mut d =
        LcdmDispenser::open_checked(LcdmConfig::new(sim.port_path(), LcdmModel::Lcdm2000)).unwrap();
    let started = std::time::Instant::now();
    let o = d
        .dispense("order-real-speed", &DispenseRequest::upper_lower(10, 5))
        .unwrap();
    let took = started.elapsed();
    assert!(o.is_completed(), "{o:?}");
    assert_eq!((o.delivered(UPPER), o.delivered(LOWER)), (10, 5));
    assert_eq!(sim.counters().delivered, 15);
    assert!(
        took >= std::time::Duration::from_millis(15 * 143),
        "the notes took their time: {took:?}"
    );
}
