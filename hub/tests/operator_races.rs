//! An operator's command racing the hub instances for the same rows.
//!
//! On PostgreSQL every transaction is `SERIALIZABLE`: when an operator's command and another
//! transaction (a hub instance serving a message, another operator) change the same row at
//! once, one of them fails to serialize and is rolled back. The instances run theirs again;
//! so must the operator's command, or `qrcash-hub tx resolve` fails with "transaction
//! conflict" while the hub is busy. Runs on the backend `QRCASH_TEST_BACKEND` names (the
//! second run of the hub's suites in `scripts/test.sh` is on PostgreSQL, where the race is
//! real; on SQLite the writers queue on the file's lock).

use qrcash_hub::admin::{self, NewAccount};
use qrcash_hub::identity::HashCost;
use qrcash_hub::store::Store;
use qrcash_protocol::Currency;

/// Commands per thread: enough for the two threads' transactions to overlap many times.
const ROUNDS: usize = 40;

#[test]
fn two_operators_changing_one_account_at_once_both_succeed_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = Store::open_test_shared(&dir.path().join("hub.sqlite"), 2);
    admin::create_account(
        &mut stores[0],
        &NewAccount {
            id: "hanako".into(),
            currency: Currency::JPY,
            password: "correct horse".into(),
            pin: "1234".into(),
            opening_balance: 0,
        },
        HashCost::TEST,
        1_000,
    )
    .unwrap();
    let results: Vec<Vec<String>> = std::thread::scope(|s| {
        let threads: Vec<_> = stores
            .iter_mut()
            .enumerate()
            .map(|(t, store)| {
                s.spawn(move || {
                    (0..ROUNDS)
                        .filter_map(|i| {
                            // Both rewrite the account's row and append to the audit trail.
                            admin::change_password(
                                store,
                                "hanako",
                                &format!("password {t}-{i}"),
                                HashCost::TEST,
                                2_000 + i as u64,
                            )
                            .err()
                            .map(|e| format!("operator {t}, change {i}: {e}"))
                        })
                        .collect()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let failures: Vec<String> = results.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} of {} commands failed:\n{}",
        failures.len(),
        2 * ROUNDS,
        failures.join("\n")
    );
    // Every command is in the audit trail once: none was applied twice by running it again.
    let changes = admin::audit_tail(&stores[0], 10 * ROUNDS)
        .unwrap()
        .into_iter()
        .filter(|row| row.entry.msg_type.as_deref() == Some("account password"))
        .count();
    assert_eq!(changes, 2 * ROUNDS);
}
