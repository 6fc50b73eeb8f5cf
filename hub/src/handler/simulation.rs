//! Randomized simulation: thousands of interleaved flows through the pure handler with a
//! seeded generator, then the money invariants (`docs/invariants.md`) are checked: the
//! ledger balances, every hold matches a withdrawal that holds funds, at most one order per
//! withdrawal and at most one capture per order, and nothing is left unsettled unflagged.
//! Also the concurrent double-presentation race between two hub instances.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use qrcash_protocol::messages::{
    AtmUp, CodePresented, ConfirmRequest, DeclineWithdrawal, DispenseOrder, DispenseOutcome,
    OrderRefused, PhonePush, PhoneUp, RegisterWithdrawal, SessionCancelled, TopUp, Transfer,
};
use qrcash_protocol::{Amount, Currency, RejectReason};

use super::Disposition;
use crate::admin;
use crate::rng::SeededEntropy;
use crate::store::Store;
use crate::testkit::*;
use crate::withdrawal::Phase;

#[derive(Debug, Clone)]
enum Flow {
    Issued {
        phone: usize,
        token: String,
    },
    Presented {
        phone: usize,
        atm: usize,
        req: ConfirmRequest,
    },
    Ordered {
        atm: usize,
        order: DispenseOrder,
    },
}

fn run(seed: u64, flows: usize) {
    let mut config = test_config();
    config.withdrawal.daily = 1_000_000_000_000;
    config.payments.daily = 1_000_000_000_000;
    config.withdrawal.qr_images = false;
    let mut rig = Rig::new(Store::open_test(), config, seed);
    let mut rng = SeededEntropy::new(seed ^ 0x5151);
    let accounts = ["a0", "a1", "a2", "a3", "a4", "a5"];
    let mut phones = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        rig.account(a, 100_000_000);
        let mut p = TestDevice::new(&format!("p{i}"));
        p.ttl = Duration::from_secs(3600);
        assert_eq!(rig.login(&mut p, a).result, Ok(Disposition::Applied));
        phones.push(p);
    }
    let mut atms: Vec<TestDevice> = (0..3).map(|i| rig.atm(&format!("atm{i}"))).collect();
    for a in &mut atms {
        a.ttl = Duration::from_secs(7 * 24 * 3600);
    }
    let mut live: Vec<Flow> = Vec::new();
    let (mut started, mut steps) = (0usize, 0usize);
    let mut key = 0u64;
    let mut why = std::collections::BTreeMap::<String, u32>::new();

    while started < flows || !live.is_empty() {
        steps += 1;
        assert!(steps < flows * 40, "simulation does not converge");
        // Start a new flow, or advance a random live one.
        // Keep a handful of flows interleaved, mostly advancing the newest.
        if started < flows && (live.len() < 3 || (live.len() < 12 && rng.below(3) == 0)) {
            started += 1;
            let phone = rng.below(phones.len() as u64) as usize;
            let yen = (1 + rng.below(8)) * 5_000;
            let account = accounts[phone];
            let h = rig.phone(
                &mut phones[phone],
                PhoneUp::RegisterWithdrawal(qrcash_protocol::messages::RegisterWithdrawal {
                    account: account.into(),
                    amount: Amount::new(yen, Currency::JPY),
                }),
            );
            match rig
                .pushes(&h.outgoing, &phones[phone].id)
                .pop()
                .map(|c| c.msg)
            {
                Some(PhonePush::CodeIssued(c)) => live.push(Flow::Issued {
                    phone,
                    token: c.token,
                }),
                Some(PhonePush::Rejected(_)) => {}
                other => panic!("register: {other:?}"),
            }
            // Money moves between accounts now and then.
            if rng.below(4) == 0 {
                key += 1;
                let (from, to) = (phone, (phone + 1) % phones.len());
                let msg = if rng.below(2) == 0 {
                    PhoneUp::Transfer(Transfer {
                        idempotency_key: format!("k{key}"),
                        to_account: accounts[to].into(),
                        amount: Amount::new(1 + rng.below(20_000), Currency::JPY),
                        memo: None,
                    })
                } else {
                    PhoneUp::TopUp(TopUp {
                        idempotency_key: format!("k{key}"),
                        amount: Amount::new(1 + rng.below(50_000), Currency::JPY),
                        from: crate::testkit::funding(accounts[from]),
                    })
                };
                rig.phone(&mut phones[from], msg);
            }
            continue;
        }
        let i = if rng.below(4) == 0 {
            rng.below(live.len() as u64) as usize
        } else {
            live.len() - 1
        };
        let flow = live.remove(i);
        let dice = rng.below(100);
        match flow {
            Flow::Issued { phone, token } => {
                if dice < 8 {
                    // Abandoned: the code will expire.
                    continue;
                }
                let atm = rng.below(atms.len() as u64) as usize;
                let h = rig.atm_send(
                    &mut atms[atm],
                    AtmUp::CodePresented(CodePresented {
                        token: token.clone(),
                    }),
                );
                // Now and then a second ATM tries the same code: it must lose.
                if dice < 15 {
                    let other = (atm + 1) % atms.len();
                    let h2 = rig.atm_send(
                        &mut atms[other],
                        AtmUp::CodePresented(CodePresented {
                            token: token.clone(),
                        }),
                    );
                    if h.result.is_ok() {
                        assert_eq!(
                            h2.result.as_ref().map_err(|e| e.reason()),
                            Err(RejectReason::CodeAlreadyUsed)
                        );
                    }
                }
                if let Some(PhonePush::ConfirmRequest(req)) = rig
                    .pushes(&h.outgoing, &phones[phone].id)
                    .pop()
                    .map(|c| c.msg)
                {
                    live.push(Flow::Presented { phone, atm, req });
                }
            }
            Flow::Presented { phone, atm, req } => {
                if dice < 5 {
                    rig.phone(
                        &mut phones[phone],
                        PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
                            tx_id: req.tx_id,
                            not_me: false,
                        }),
                    );
                } else if dice < 10 {
                    rig.atm_send(
                        &mut atms[atm],
                        AtmUp::SessionCancelled(SessionCancelled {
                            tx_id: req.tx_id,
                            reason: qrcash_protocol::messages::CancelReason::Customer,
                        }),
                    );
                } else if dice < 11 {
                    // Too late: the sweeper or the confirmation itself expires it.
                    rig.clock.advance(Duration::from_secs(121));
                    rig.confirm(&mut phones[phone], &req);
                } else if dice < 16 {
                    // A wrong PIN first, then the right one.
                    let msg = confirm_message(&phones[phone], &req, Some("0000"), Some(near_atm()));
                    rig.phone(&mut phones[phone], msg);
                    live.push(Flow::Presented { phone, atm, req });
                } else {
                    let h = rig.confirm(&mut phones[phone], &req);
                    if let Err(e) = &h.result {
                        *why.entry(format!("{:?}", e.reason())).or_insert(0) += 1;
                    }
                    if let Some(order) = rig.order(&h.outgoing, &atms[atm].id) {
                        assert!(order.notes_match_amount());
                        live.push(Flow::Ordered { atm, order });
                    }
                }
            }
            Flow::Ordered { atm, order } => {
                let full = order.amount.minor;
                let (outcome, exited) = match dice {
                    0..=59 => (DispenseOutcome::Dispensed, full),
                    60..=69 => (DispenseOutcome::Partial, full / 2 / 1000 * 1000),
                    70..=77 => (DispenseOutcome::Failed, 0),
                    78..=85 => (DispenseOutcome::InDoubt, full / 2 / 1000 * 1000),
                    86..=92 => {
                        rig.atm_send(
                            &mut atms[atm],
                            AtmUp::OrderRefused(OrderRefused {
                                order_id: order.order_id,
                                tx_id: order.tx_id,
                                reason: "simulated".into(),
                            }),
                        );
                        continue;
                    }
                    _ => {
                        // Lost for a while: report later (or never, then in doubt).
                        rig.clock.advance(Duration::from_secs(30));
                        if rng.below(2) == 0 {
                            live.push(Flow::Ordered { atm, order });
                        }
                        continue;
                    }
                };
                let outcome = if outcome == DispenseOutcome::Partial && exited == 0 {
                    DispenseOutcome::Failed
                } else {
                    outcome
                };
                let msg = report_message(&order, outcome, exited);
                let bytes = atms[atm].message(&rig.hub_id(), rig.now(), msg);
                let up = atms[atm].atm_up();
                let first = rig.hub.handle(&up, &bytes);
                assert!(first.result.is_ok(), "{:?}", first.result);
                // The outbox may deliver it twice.
                if dice.is_multiple_of(3) {
                    let again = rig.hub.handle(&up, &bytes);
                    assert_eq!(again.result, Ok(Disposition::Duplicate));
                }
            }
        }
        if steps.is_multiple_of(50) {
            rig.clock.advance(Duration::from_secs(7));
            rig.hub.sweep().unwrap_or_else(|e| panic!("sweep: {e}"));
        }
        if steps.is_multiple_of(500) {
            let r = admin::ledger_check(rig.hub.store()).unwrap();
            assert!(r.is_ok(), "step {steps}: {r}");
        }
    }

    // Let every deadline pass: codes and sessions expire, unreported orders become in doubt.
    rig.clock.advance(Duration::from_secs(2 * 3600));
    rig.hub.sweep().unwrap();
    let r = admin::ledger_check(rig.hub.store()).unwrap();
    assert!(r.is_ok(), "{r}");
    let left = admin::unsettled(rig.hub.store()).unwrap();
    for w in &left {
        assert!(
            w.needs_reconciliation && w.phase == Phase::InDoubt,
            "left unsettled and unflagged: {w:?}"
        );
    }
    // The operator reconciles every one (about half paid out, say, in the order's own
    // notes); then nothing is open.
    for w in left {
        let now = rig.now();
        let evidence = admin::withdrawal_evidence(rig.hub.store(), &w.tx_id).unwrap();
        let paid = (0..=w.amount.minor / 2)
            .rev()
            .find(|v| evidence.check(*v).is_ok())
            .unwrap();
        let resolution = admin::Resolution {
            dispensed: paid,
            operator: "simulation".into(),
            reason: "cash counted".into(),
        };
        admin::resolve_withdrawal(rig.hub.store_mut(), &w.tx_id, &resolution, 0, now).unwrap();
    }
    assert!(admin::unsettled(rig.hub.store()).unwrap().is_empty());
    let r = admin::ledger_check(rig.hub.store()).unwrap();
    assert!(r.is_ok(), "{r}");

    // At most one order per withdrawal; captures never exceed the amount; the cash that
    // left the ATMs is exactly what the withdrawals settled.
    let db = rig.hub.store().db();
    let over = db
        .read_i64(
            "SELECT COUNT(*) FROM withdrawals w WHERE w.settled > w.amount
             OR (SELECT COALESCE(SUM(-e.amount), 0) FROM entries e JOIN postings p ON p.id = e.posting_id
                 WHERE p.kind = 'capture' AND p.reference = w.tx_id AND e.amount < 0) != w.settled",
        )
        .unwrap();
    assert_eq!(over, 0, "captures disagree with settled amounts");
    let cash = db
        .read_i64(
            "SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts
             WHERE kind = 'atm_cash' AND currency = 'JPY'",
        )
        .unwrap();
    let settled = db
        .read_i64("SELECT COALESCE(SUM(settled), 0) FROM withdrawals")
        .unwrap();
    assert_eq!(cash, settled);
    let dispensed = db
        .read_i64("SELECT COUNT(*) FROM withdrawals WHERE phase IN ('dispensed', 'partial')")
        .unwrap();
    assert!(
        dispensed > (flows / 3) as i64,
        "only {dispensed} withdrawals paid out; confirmations refused: {why:?}"
    );
}

#[test]
fn ledger_is_conserved_over_thousands_of_random_flows() {
    run(11, 2_000);
}

/// Two hubs (the handlers of two instances) on one database in `dir` (a SQLite file, or
/// PostgreSQL under `QRCASH_TEST_BACKEND=postgres`), configured so that `rounds`
/// withdrawals of 1,000 yen by one customer fit under the daily limit.
fn two_instances(dir: &std::path::Path, rounds: usize) -> (Rig, Rig) {
    let key = test_hub_key();
    let mut stores = Store::open_test_shared(&dir.join("hub.sqlite"), 2);
    let (sb, sa) = (stores.pop().unwrap(), stores.pop().unwrap());
    let mut config = test_config();
    config.withdrawal.daily = 1_000 * (rounds as u64 + 1);
    let a = Rig::with_key(sa, config.clone(), 1, key.clone());
    (a, Rig::with_key(sb, config, 2, key))
}

/// Two hub instances share one database (a SQLite file, or PostgreSQL under
/// `QRCASH_TEST_BACKEND=postgres`, where the loser's transaction fails to serialize and runs
/// again); two ATMs present the same code at the same moment. Exactly one wins, every time:
/// 40 rounds, or `QRCASH_RACE_ROUNDS` (the 1,000-round run of docs/BENCHMARKS.md).
#[test]
fn two_atms_presenting_one_code_at_once_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let rounds: usize = std::env::var("QRCASH_RACE_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let (mut a, b) = two_instances(dir.path(), rounds);
    a.account("hanako", 10_000_000 + 1_000 * rounds as u64);
    let mut atm1 = a.atm("atm-1");
    let mut atm2 = a.atm("atm-2");
    let mut phone = TestDevice::new("phone-1");
    a.login(&mut phone, "hanako");
    let mut hubs = [a, b];
    for round in 0..rounds {
        let code = hubs[0].register(&mut phone, "hanako", 1_000);
        let hub_id = hubs[0].hub_id();
        let now = hubs[0].now();
        let m1 = atm1.message(
            &hub_id,
            now,
            AtmUp::CodePresented(CodePresented {
                token: code.token.clone(),
            }),
        );
        let m2 = atm2.message(
            &hub_id,
            now,
            AtmUp::CodePresented(CodePresented {
                token: code.token.clone(),
            }),
        );
        let barrier = Arc::new(Barrier::new(2));
        let [mut h0, mut h1] = hubs;
        let (b0, b1) = (barrier.clone(), barrier);
        let (t1, t2) = (atm1.atm_up(), atm2.atm_up());
        let j0 = std::thread::spawn(move || {
            b0.wait();
            let r = h0.hub.handle(&t1, &m1);
            (h0, r)
        });
        let j1 = std::thread::spawn(move || {
            b1.wait();
            let r = h1.hub.handle(&t2, &m2);
            (h1, r)
        });
        let (h0, r0) = j0.join().unwrap();
        let (h1, r1) = j1.join().unwrap();
        let wins = [&r0, &r1].iter().filter(|r| r.result.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {:?} / {:?}", r0.result, r1.result);
        let loser = if r0.result.is_ok() { &r1 } else { &r0 };
        assert_eq!(
            loser.result.as_ref().map_err(|e| e.reason()),
            Err(RejectReason::CodeAlreadyUsed)
        );
        hubs = [h0, h1];
    }
}

/// The same race inside group commits: each instance handles a batch of its ATM's
/// presentation and another customer's registration. On PostgreSQL the losing batch fails
/// to serialize and its messages run again one transaction each: the registration it
/// carried is applied all the same, and its presentation is answered `code_already_used`.
#[test]
fn a_batch_that_loses_the_race_still_applies_its_other_messages() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 20;
    let (mut a, b) = two_instances(dir.path(), rounds);
    let mut atms = [a.atm("atm-1"), a.atm("atm-2")];
    let mut phone = TestDevice::new("phone-1");
    let mut others = [TestDevice::new("phone-2"), TestDevice::new("phone-3")];
    a.account("hanako", 10_000_000);
    a.login(&mut phone, "hanako");
    for (id, dev) in ["taro", "jiro"].into_iter().zip(&mut others) {
        a.account(id, 10_000_000);
        a.login(dev, id);
    }
    let mut hubs = [a, b];
    for round in 0..rounds {
        let code = hubs[0].register(&mut phone, "hanako", 1_000);
        let (hub_id, now) = (hubs[0].hub_id(), hubs[0].now());
        let batches: Vec<Vec<super::Incoming>> = (0..2)
            .map(|i| {
                let present = AtmUp::CodePresented(CodePresented {
                    token: code.token.clone(),
                });
                let register = PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                    account: ["taro", "jiro"][i].into(),
                    amount: Amount::new(1_000, Currency::JPY),
                });
                vec![
                    super::Incoming::new(atms[i].atm_up(), atms[i].message(&hub_id, now, present)),
                    super::Incoming::new(
                        others[i].phone_up(),
                        others[i].message(&hub_id, now, register),
                    ),
                ]
            })
            .collect();
        let barrier = Arc::new(Barrier::new(2));
        let joins: Vec<_> = hubs
            .into_iter()
            .zip(batches)
            .map(|(mut h, batch)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = h.hub.handle_batch(&batch);
                    (h, r)
                })
            })
            .collect();
        let done: Vec<_> = joins.into_iter().map(|j| j.join().unwrap()).collect();
        let wins = done.iter().filter(|(_, r)| r[0].result.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: one presentation wins");
        for (_, r) in &done {
            if let Err(e) = &r[0].result {
                assert_eq!(e.reason(), RejectReason::CodeAlreadyUsed, "round {round}");
            }
            assert_eq!(
                r[1].result,
                Ok(Disposition::Applied),
                "round {round}: the batch's registration"
            );
        }
        let mut back = done.into_iter().map(|(h, _)| h);
        hubs = [back.next().unwrap(), back.next().unwrap()];
    }
}
