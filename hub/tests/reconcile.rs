//! Cassette reconciliation through the real handler: heartbeats carry the ATM's counts, a
//! withdrawal's dispense report says which notes left; the hub keeps each change of counts
//! and says, between two, whether the cassettes lost exactly the notes dispensed, gained
//! some (replenished), or lost more (unaccounted).

use qrcash_hub::admin;
use qrcash_hub::reconcile::Verdict;
use qrcash_hub::testkit::Rig;
use qrcash_protocol::messages::{
    AtmState, AtmUp, CassetteState, CassetteStatus, DispenseOutcome, Heartbeat,
};

fn heartbeat(upper: u32, lower: u32) -> AtmUp {
    let c = |denomination, notes| CassetteStatus {
        denomination,
        notes,
        state: CassetteState::Ok,
    };
    AtmUp::Heartbeat(Heartbeat {
        state: AtmState::Idle,
        cassettes: vec![c(10_000, upper), c(1_000, lower)],
        outbox: 0,
        software: "test".into(),
    })
}

#[test]
fn counts_are_reconciled_with_the_notes_dispensed() {
    let mut rig = Rig::in_memory(3);
    rig.account("hanako", 100_000);
    let mut atm = rig.atm("atm-1");
    let mut phone = qrcash_hub::testkit::TestDevice::new("phone-1");
    rig.login(&mut phone, "hanako");
    rig.atm_send(&mut atm, heartbeat(100, 100));
    // Unchanged counts keep no new snapshot.
    rig.atm_send(&mut atm, heartbeat(100, 100));

    let code = rig.register(&mut phone, "hanako", 12_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    let done = rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 12_000);
    assert!(done.result.is_ok(), "{:?}", done.result);
    let (upper, lower) = order
        .notes
        .iter()
        .fold((0, 0), |(u, l), n| match n.denomination {
            10_000 => (u + n.count, l),
            _ => (u, l + n.count),
        });
    rig.atm_send(&mut atm, heartbeat(100 - upper, 100 - lower));
    let r = admin::reconcile_atm(rig.hub.store(), "atm-1").unwrap();
    assert_eq!(r.len(), 1, "one change of counts: {r:?}");
    assert!(
        r[0].cassettes
            .iter()
            .all(|c| c.verdict == Verdict::Balanced),
        "{r:?}"
    );
    assert_eq!(
        r[0].cassettes.iter().map(|c| c.picked).sum::<u32>(),
        upper + lower
    );

    // Five 1,000 notes gone without a dispense; then the upper cassette replenished.
    rig.atm_send(&mut atm, heartbeat(100 - upper, 95 - lower));
    rig.atm_send(&mut atm, heartbeat(500, 95 - lower));
    let r = admin::reconcile_atm(rig.hub.store(), "atm-1").unwrap();
    assert_eq!(r.len(), 3, "{r:?}");
    let lower_change = r[1]
        .cassettes
        .iter()
        .find(|c| c.denomination == 1_000)
        .unwrap();
    assert_eq!(lower_change.verdict, Verdict::Missing(5));
    let upper_change = r[2]
        .cassettes
        .iter()
        .find(|c| c.denomination == 10_000)
        .unwrap();
    assert_eq!(upper_change.verdict, Verdict::Added(400 + upper));
    assert!(admin::reconcile_atm(rig.hub.store(), "atm-9").is_err());
}
