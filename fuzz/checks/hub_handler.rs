// The hub's message handler entry point, on every topic it serves: arbitrary payloads must
// never panic, never produce a message to anyone (nothing unauthenticated is answered), never
// post to the ledger, and leave the books balanced.
//
// Shared by the fuzz target and the regression test that replays fuzz/regressions/.

use qrcash_hub::testkit::Rig;

thread_local! {
    /// One hub for the whole run: an account, an ATM and a logged-in phone, so that the
    /// handler has real state for garbage to collide with.
    static RIG: std::cell::RefCell<Rig> = std::cell::RefCell::new({
        let mut rig = Rig::in_memory(7);
        rig.account("hanako", 100_000);
        let _atm = rig.atm("atm-1");
        let mut phone = qrcash_hub::testkit::TestDevice::new("dev-1");
        let _ = rig.login(&mut phone, "hanako");
        rig
    });
}

const TOPICS: [&str; 6] = [
    "qrcash/v1/atm/atm-1/up",
    "qrcash/v1/phone/dev-1/up",
    "qrcash/v1/atm/atm-1/presence",
    "qrcash/v1/phone/dev-2/up",
    "qrcash/v1/atm/atm-1/down",
    "qrcash/v1/elsewhere",
];

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let topic = TOPICS[usize::from(selector) % TOPICS.len()];
    RIG.with(|rig| {
        let mut rig = rig.borrow_mut();
        let before = qrcash_hub::admin::ledger_check(rig.hub.store()).expect("ledger check");
        let handled = rig.hub.handle(topic, payload);
        assert!(
            handled.outgoing.is_empty(),
            "unauthenticated input on {topic} produced {} message(s)",
            handled.outgoing.len()
        );
        let after = qrcash_hub::admin::ledger_check(rig.hub.store()).expect("ledger check");
        assert!(after.is_ok(), "ledger broken: {:?}", after.problems);
        assert_eq!(after.postings, before.postings, "garbage posted to the ledger");
    });
}
