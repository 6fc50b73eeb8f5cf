//! Every injectable fault, driven by the real driver against the simulator over a
//! pseudo-terminal. Each test checks the reported outcome against what the simulated machine
//! physically did.

mod dispenser_support;

use std::time::{Duration, Instant};

use dispenser_support::{DISPENSE_TIMEOUT, assert_accounted, lcdm1000, lcdm2000, open};
use qrcash_hardware::dispenser::lcdm::LcdmModel;
use qrcash_hardware::dispenser::sim::{FaultAfter, Faults};
use qrcash_hardware::dispenser::{
    CassetteId, CassetteState, DeviceError, DispenseRequest, DispenseResult, Dispenser,
    DispenserError, InDoubtReason, StopReason,
};

const UPPER: CassetteId = CassetteId::UPPER;
const LOWER: CassetteId = CassetteId::LOWER;

fn stopped_by(error: DeviceError) -> DispenseResult {
    DispenseResult::Stopped {
        reason: StopReason::Device { error },
    }
}

#[test]
fn jam_stops_with_partial_counts_and_blocks_until_recovered() {
    let sim = lcdm1000(500);
    sim.set_faults(Faults {
        jam_after: Some(25),
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(40))
        .unwrap();
    assert_eq!(o.result, stopped_by(DeviceError::JamAtChk));
    let t = o.tally(UPPER).unwrap();
    assert_eq!((t.picked, t.exited, t.rejected), (26, 25, 0));
    assert_eq!(t.unaccounted(), 1, "the jammed note is inside");
    assert!(o.needs_recovery());
    assert_accounted(&o, 0, &sim);
    assert_eq!(sim.counters().in_path, 1);

    // No further dispense until the machine is cleared.
    let commands = sim.counters().link.dispense_commands;
    assert!(matches!(
        d.dispense("order-test", &DispenseRequest::upper(5)),
        Err(DispenserError::RecoveryRequired)
    ));
    assert_eq!(sim.counters().link.dispense_commands, commands);

    let s = d.status().unwrap();
    assert!(s.notes_in_path && !s.is_ready(), "{s:?}");
    assert_eq!(s.error, Some(DeviceError::JamAtChk));

    let r = d.recover_last().unwrap();
    assert!(r.purged && r.machine_clear(), "{r:?}");
    assert_eq!(r.last.as_ref(), Some(&o));
    assert!(r.status_before.notes_in_path);
    assert!(r.status_after.is_ready());
    let c = sim.counters();
    assert_eq!((c.in_path, c.reject_tray), (0, 1));

    let o = d
        .dispense("order-test", &DispenseRequest::upper(5))
        .unwrap();
    assert!(o.is_completed());
    assert_eq!(sim.counters().delivered, 30);
}

#[test]
fn pickup_error_reports_exact_counts_and_does_not_block() {
    let sim = lcdm1000(500);
    sim.set_faults(Faults {
        pickup_error_after: Some(3),
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(10))
        .unwrap();
    assert_eq!(o.result, stopped_by(DeviceError::PickupError));
    assert_eq!(o.delivered(UPPER), 3);
    assert!(!o.needs_recovery());
    assert_accounted(&o, 0, &sim);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(2))
        .unwrap();
    assert!(o.is_completed());
}

#[test]
fn empty_cassette_is_bill_end() {
    let sim = lcdm1000(500);
    sim.set_notes(UPPER, 4);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(10))
        .unwrap();
    assert_eq!(
        o.result,
        stopped_by(DeviceError::BillEnd { cassette: UPPER })
    );
    assert_eq!(o.delivered(UPPER), 4);
    assert_eq!(o.tally(UPPER).unwrap().state, CassetteState::Empty);
    assert_accounted(&o, 0, &sim);
    let s = d.status().unwrap();
    assert_eq!(s.cassette(UPPER), CassetteState::Empty);
    assert!(!s.is_ready());
}

#[test]
fn forced_bill_end_on_the_lower_cassette() {
    let sim = lcdm2000(100, 100);
    sim.set_faults(Faults {
        bill_end_after: Some(2),
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(0, 5))
        .unwrap();
    assert_eq!(
        o.result,
        stopped_by(DeviceError::BillEnd { cassette: LOWER })
    );
    assert_eq!(o.delivered(LOWER), 2);
    assert_eq!(o.tally(LOWER).unwrap().state, CassetteState::Empty);
    assert_accounted(&o, 0, &sim);
}

#[test]
fn forced_near_end() {
    let sim = lcdm1000(500);
    sim.set_faults(Faults {
        force_near_end: true,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    assert_eq!(d.status().unwrap().cassette(UPPER), CassetteState::NearEnd);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(1))
        .unwrap();
    assert!(o.is_completed());
    assert_eq!(o.tally(UPPER).unwrap().state, CassetteState::NearEnd);
}

#[test]
fn missing_cassette() {
    let sim = lcdm2000(100, 100);
    sim.set_cassette_present(LOWER, false);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let s = d.status().unwrap();
    assert_eq!(s.cassette(LOWER), CassetteState::Missing);
    assert_eq!(s.cassette(UPPER), CassetteState::Normal);
    assert!(!s.is_ready());
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(0, 3))
        .unwrap();
    assert_eq!(
        o.result,
        stopped_by(DeviceError::CassetteNotRecognised { cassette: LOWER })
    );
    assert_eq!(o.tally(LOWER).unwrap().state, CassetteState::Missing);
    assert_accounted(&o, 0, &sim);
    assert_eq!(sim.counters().delivered, 0);

    sim.set_cassette_present(LOWER, true);
    sim.set_cassette_present(UPPER, false);
    assert_eq!(d.status().unwrap().cassette(UPPER), CassetteState::Missing);
}

#[test]
fn missing_reject_tray() {
    let sim = lcdm1000(100);
    sim.set_reject_tray_present(false);
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let s = d.status().unwrap();
    assert!(!s.reject_tray_present && !s.is_ready());
    assert!(matches!(
        d.purge(),
        Err(DispenserError::Device(DeviceError::RejectTrayNotRecognised))
    ));
}

#[test]
fn every_device_error_reaches_the_outcome_typed() {
    use DeviceError as E;
    let sim = lcdm2000(1000, 1000);
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    let errors = [
        E::PickupError,
        E::JamAtChk,
        E::Overflow,
        E::JamAtExitOrEjt,
        E::JamAtDiv,
        E::JamAtDivAlt,
        E::UndefinedCommand,
        E::BillEnd { cassette: UPPER },
        E::BillEnd { cassette: LOWER },
        E::CountingErrorChk34,
        E::JamAtChk34,
        E::NoteRequestError,
        E::CountingErrorDivEjt,
        E::CountingErrorEjtExit,
        E::RejectTrayNotRecognised,
        E::MotorStop,
        E::TimeoutDivToEjt,
        E::OverReject,
        E::CassetteNotRecognised { cassette: UPPER },
        E::CassetteNotRecognised { cassette: LOWER },
        E::DispensingTimeout,
        E::JamAtEjt,
        E::DiverterSolenoidOrSolSensor,
        E::SolSensor,
        E::PurgeError,
        E::Unrecognised { code: 0x99 },
    ];
    for error in errors {
        sim.set_faults(Faults {
            error_after: Some(FaultAfter {
                notes: 2,
                error: error.clone(),
            }),
            ..Faults::default()
        });
        let before = sim.counters().delivered;
        let o = d
            .dispense("order-test", &DispenseRequest::upper_lower(3, 3))
            .unwrap();
        assert_eq!(o.result, stopped_by(error.clone()), "{error:?}");
        assert_eq!(o.delivered_total(), 2, "{error:?}");
        assert_accounted(&o, before, &sim);
        if o.needs_recovery() {
            let r = d.recover_last().unwrap();
            assert!(r.machine_clear(), "{error:?}: {r:?}");
        }
    }
}

#[test]
fn dead_device_status_fails_and_dispense_is_in_doubt_with_nothing_paid() {
    let sim = lcdm1000(100);
    sim.set_faults(Faults {
        no_answer: true,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let started = Instant::now();
    assert!(matches!(
        d.status(),
        Err(DispenserError::NoAcknowledge { sends: 4 })
    ));
    assert!(started.elapsed() < Duration::from_secs(2));

    let started = Instant::now();
    let o = d
        .dispense("order-test", &DispenseRequest::upper(5))
        .unwrap();
    assert!(
        started.elapsed() >= DISPENSE_TIMEOUT,
        "waited for a late answer"
    );
    assert_eq!(
        o.result,
        DispenseResult::InDoubt {
            in_flight: DispenseRequest::upper(5),
            reason: InDoubtReason::NoResponse {
                acknowledged: false
            }
        }
    );
    assert_accounted(&o, 0, &sim);
    let c = sim.counters();
    assert_eq!((c.delivered, c.link.commands), (0, 0));

    // The device comes back: dispensing needs recovery first, which keeps the doubt.
    sim.set_faults(Faults::default());
    assert!(matches!(
        d.dispense("order-test", &DispenseRequest::upper(5)),
        Err(DispenserError::RecoveryRequired)
    ));
    let r = d.recover_last().unwrap();
    assert!(r.machine_clear());
    assert!(r.last.as_ref().is_some_and(|l| l.is_in_doubt()));
    assert!(
        d.dispense("order-test", &DispenseRequest::upper(5))
            .unwrap()
            .is_completed()
    );
}

#[test]
fn corrupt_responses_are_naked_and_the_resent_copy_used() {
    let sim = lcdm1000(100);
    sim.set_faults(Faults {
        corrupt_responses: 2,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(6))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    assert_accounted(&o, 0, &sim);
    assert_eq!(sim.counters().link.responses_sent, 3);

    sim.set_faults(Faults {
        corrupt_responses: 3,
        ..Faults::default()
    });
    assert!(d.status().unwrap().is_ready());
    assert_eq!(sim.counters().link.responses_sent, 3 + 4);
}

#[test]
fn response_damaged_every_time_is_in_doubt_not_failure() {
    let sim = lcdm1000(100);
    sim.set_faults(Faults {
        corrupt_responses: 4,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(10))
        .unwrap();
    assert_eq!(
        o.result,
        DispenseResult::InDoubt {
            in_flight: DispenseRequest::upper(10),
            reason: InDoubtReason::UnreadableResponse { naks: 3 }
        }
    );
    // The machine did pay: the driver neither claimed it nor denied it.
    assert_eq!(sim.counters().delivered, 10);
    assert_eq!(o.delivered_total(), 0);
    assert_accounted(&o, 0, &sim);
}

#[test]
fn nak_storm_within_the_retry_budget_is_absorbed() {
    let sim = lcdm1000(100);
    sim.set_faults(Faults {
        nak_commands: 3,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let o = d
        .dispense("order-test", &DispenseRequest::upper(4))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    let c = sim.counters();
    assert_eq!(
        (c.delivered, c.link.naks_sent, c.link.dispense_commands),
        (4, 3, 1)
    );
}

#[test]
fn nak_storm_beyond_the_budget_refuses_and_pays_nothing() {
    let sim = lcdm1000(100);
    sim.set_faults(Faults {
        nak_commands: 10,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm1000);
    let err = d
        .dispense("order-test", &DispenseRequest::upper(4))
        .unwrap_err();
    assert!(
        matches!(err, DispenserError::CommandRejected { sends: 4 }),
        "{err}"
    );
    let c = sim.counters();
    assert_eq!((c.delivered, c.picked, c.link.dispense_commands), (0, 0, 0));
    assert_eq!(sim.faults().nak_commands, 6, "exactly four sends were made");
    // A refused command needs no recovery.
    sim.set_faults(Faults::default());
    assert!(
        d.dispense("order-test", &DispenseRequest::upper(4))
            .unwrap()
            .is_completed()
    );
}

#[test]
fn stray_idle_bytes_are_skipped() {
    let sim = lcdm2000(100, 100);
    sim.set_faults(Faults {
        line_noise: true,
        ..Faults::default()
    });
    let mut d = open(&sim, LcdmModel::Lcdm2000);
    assert!(d.status().unwrap().is_ready());
    let o = d
        .dispense("order-test", &DispenseRequest::upper_lower(21, 2))
        .unwrap();
    assert!(o.is_completed(), "{o:?}");
    assert_accounted(&o, 0, &sim);
    assert_eq!(d.rom_version().unwrap(), "LCDM-SIM 1.0");
}

/// When the host's ACK of a batch's response is lost, the device repeats that response after
/// its ACK wait. LCDM-1000/2000 frames carry no sequence number, so a repeat that arrived
/// after the next batch's command would be taken for that batch's answer and shift the
/// counts by one batch (for 45 notes in batches of 20, 20 and 5, the first 20-note response
/// answers the second batch, then the 5-note batch). The driver waits out the repeats before
/// each note-moving command: the counts are exact and every batch runs once.
#[test]
fn a_repeated_response_after_a_lost_ack_never_answers_the_next_batch() {
    for lost in [1, 2] {
        let sim = lcdm1000(100);
        sim.set_faults(Faults {
            lose_acks: lost,
            ..Faults::default()
        });
        let mut d = open(&sim, LcdmModel::Lcdm1000);
        let o = d
            .dispense("order-test", &DispenseRequest::upper(45))
            .unwrap();
        assert!(o.is_completed(), "{lost} lost: {o:?}");
        assert_eq!(o.delivered_total(), 45, "{lost} lost: {o:?}");
        assert_accounted(&o, 0, &sim);
        let link = sim.counters().link;
        assert_eq!(link.dispense_commands, 3, "{lost} lost: {link:?}");
        assert_eq!(
            link.responses_sent,
            3 + u64::from(lost),
            "the device repeated the response whose ACK it missed: {link:?}"
        );
        // A dispense right after the last one waits out its repeats too.
        sim.set_faults(Faults {
            lose_acks: 1,
            ..Faults::default()
        });
        let o = d
            .dispense("order-next", &DispenseRequest::upper(5))
            .unwrap();
        let o2 = d
            .dispense("order-after", &DispenseRequest::upper(7))
            .unwrap();
        assert_eq!((o.delivered_total(), o2.delivered_total()), (5, 7));
        assert_eq!(sim.counters().delivered, 57);
    }
}
