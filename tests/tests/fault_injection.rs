//! The short fault-injection campaign of the default test run: every fault kind once (dispenser
//! jam, pickup error, bill end, no answer, power loss; agent crash hooks after the write-ahead
//! and after the device outcome; SIGKILL of the agent at a random moment after the
//! confirmation and a few milliseconds after its dispense order passed; broker restart; hub
//! restart before and after the confirmation; replayed and long-delayed duplicates; a double
//! and a late confirmation) plus a few random ones, through the real hub service, the agent
//! binary, the LCDM simulator and the phone client over a private Mosquitto. The money
//! invariants (`qrcash_tests::invariants`) are checked after every scenario and once more
//! after a final sweep past every deadline.
//!
//! Replay a failure with the seed it prints: `QRCASH_FAULT_SEED=<n> cargo test -p
//! qrcash-tests --test fault_injection`. `QRCASH_FAULT_SCENARIOS` changes the count; the long
//! campaign is `qrcash-fault-campaign` (docs/BENCHMARKS.md).

use qrcash_tests::scenario::{Fault, Rng, Settings, campaign};

/// The seed when `QRCASH_FAULT_SEED` is not set: fixed, so the default run is repeatable.
const DEFAULT_SEED: u64 = 20_261_121;
/// Every kind once (16 faults, 15 kinds) and a few random ones.
const DEFAULT_SCENARIOS: usize = 20;

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_campaign_keeps_every_money_invariant() {
    let seed = env_number("QRCASH_FAULT_SEED").unwrap_or(DEFAULT_SEED);
    let scenarios = env_number("QRCASH_FAULT_SCENARIOS").unwrap_or(DEFAULT_SCENARIOS);
    eprintln!(
        "fault injection: seed {seed}, {scenarios} scenarios (replay: QRCASH_FAULT_SEED={seed})"
    );
    let summary = campaign(
        Settings {
            seed,
            agent_exe: env!("CARGO_BIN_EXE_qrcash-fault-campaign").into(),
            verbose: true,
        },
        scenarios,
        true,
    )
    .await
    .unwrap_or_else(|e| panic!("seed {seed}: {e}\nreplay: QRCASH_FAULT_SEED={seed}"));
    eprintln!("{}", summary.table());
    assert!(
        summary.errors.is_empty(),
        "seed {seed}: scenarios that could not finish:\n{}\nreplay: QRCASH_FAULT_SEED={seed}",
        summary.errors.join("\n")
    );
    assert!(
        summary.violations.is_empty(),
        "seed {seed}: {} violations:\n{}\nreplay: QRCASH_FAULT_SEED={seed}",
        summary.violations.len(),
        summary.violations.join("\n")
    );

    // The campaign really exercised what it claims: every kind ran, cash moved, the crash
    // hooks left transactions in doubt, and the final check saw every withdrawal.
    assert_eq!(summary.scenarios, scenarios);
    let kinds = Fault::every_kind(&mut Rng::new(0))
        .iter()
        .map(Fault::kind)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if scenarios >= kinds {
        assert_eq!(summary.by_kind.len(), kinds, "{}", summary.table());
    }
    let last = summary.final_verdict.expect("the final check ran");
    assert_eq!(last.withdrawals, scenarios, "one withdrawal per scenario");
    if scenarios >= kinds {
        assert!(last.delivered_value > 0, "no cash ever left the machine");
        assert!(
            last.in_doubt >= 2,
            "the crash hooks leave in-doubt withdrawals"
        );
        assert!(last.orders >= kinds - 2, "orders reached the agent");
    }
}
