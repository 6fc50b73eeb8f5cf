//! Database round trips per message: the machine-independent half of the hub's cost on
//! PostgreSQL (issue 13 aims at one transaction of at most 3 round trips per message).
//!
//! On SQLite there are none to count (the database runs in the process). On PostgreSQL
//! (`QRCASH_TEST_BACKEND=postgres`, the second run of the hub's suites in `scripts/test.sh`)
//! the messages of ten withdrawals are counted kind by kind, after one withdrawal that
//! prepares every statement, with the outbox on as the service runs it. The table is printed
//! for `docs/BENCHMARKS.md` (`-- --nocapture`); the ceilings asserted are today's figures
//! with a small margin, so a change that adds round trips to a message fails here.

use std::collections::BTreeMap;

use qrcash_hub::testkit::{Rig, TestDevice};
use qrcash_protocol::messages::DispenseOutcome;

/// Round trips per message today (PostgreSQL 15, December 2, 2026: 18, 21, 22 and 23; one
/// per statement, a ledger posting three whatever its legs), plus a margin of about 10 %.
/// Lower them as statements are merged.
const CEILINGS: [(&str, u64); 4] = [
    ("RegisterWithdrawal", 20),
    ("CodePresented", 23),
    ("ConfirmWithdrawal", 24),
    ("DispenseReport", 25),
];

#[test]
fn round_trips_per_message_stay_under_their_ceilings() {
    let mut rig = Rig::in_memory(3).with_outbox();
    let Some(_) = rig.hub.store().round_trips() else {
        assert!(
            !rig.hub.store().is_postgres(),
            "PostgreSQL counts its trips"
        );
        return;
    };
    rig.account("hanako", 10_000_000);
    let mut atm = rig.atm("atm-1");
    let mut phone = TestDevice::new("phone-1");
    rig.login(&mut phone, "hanako");
    let mut counts: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for round in 0..11 {
        let mut count = |rig: &Rig, kind: &'static str, before: u64| {
            let trips = rig.hub.store().round_trips().unwrap() - before;
            if round > 0 {
                let e = counts.entry(kind).or_default();
                e.0 += trips;
                e.1 += 1;
            }
        };
        let trips = |rig: &Rig| rig.hub.store().round_trips().unwrap();

        let before = trips(&rig);
        let code = rig.register(&mut phone, "hanako", 10_000);
        count(&rig, "RegisterWithdrawal", before);
        let before = trips(&rig);
        let request = rig.present(&mut atm, &code.token, "phone-1");
        count(&rig, "CodePresented", before);
        let before = trips(&rig);
        let order = rig.confirm_order(&mut phone, &request);
        count(&rig, "ConfirmWithdrawal", before);
        let before = trips(&rig);
        let h = rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 10_000);
        assert!(h.result.is_ok(), "{:?}", h.result);
        count(&rig, "DispenseReport", before);
    }
    println!("| message | round trips |\n|---|---|");
    for (kind, (total, n)) in &counts {
        println!("| {kind} | {:.1} |", *total as f64 / *n as f64);
    }
    for (kind, ceiling) in CEILINGS {
        let (total, n) = counts[kind];
        assert!(
            total <= ceiling * n,
            "{kind}: {:.1} round trips per message, more than {ceiling}",
            total as f64 / n as f64
        );
    }
}
