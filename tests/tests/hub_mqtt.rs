//! The hub as a service over real brokers: the embedded rumqttd, a private Mosquitto, and
//! Mosquitto locked down with TLS, client certificates and the production ACL. A complete
//! withdrawal, the double-presentation race, acknowledgements and graceful shutdown.

mod hub_common;

use std::time::Duration;

use hub_common::{Net, Peer, WAIT};
use qrcash_hub::admin;
use qrcash_hub::testkit::{
    PIN, TestDevice, confirm_message, login_message, near_atm, report_message,
};
use qrcash_io::BrokerConfig;
use qrcash_protocol::messages::{
    AtmDown, AtmUp, CodePresented, DispenseOutcome, Heartbeat, PhonePush, PhoneUp, ReceiptStatus,
    RegisterWithdrawal,
};
use qrcash_protocol::{Amount, Currency, RejectReason};
use qrcash_tests::broker::Mosquitto;
use qrcash_tests::pki::TestPki;

fn setup(rig: &mut qrcash_hub::testkit::Rig) -> Vec<TestDevice> {
    rig.account("hanako", 100_000);
    vec![rig.atm("atm-1"), rig.atm("atm-2")]
}

/// Login, register, present, confirm, dispense, receipt: every message over the broker.
async fn withdrawal(cfg: impl Fn(&str) -> BrokerConfig) {
    let (net, devices) = Net::start(cfg("hub"), "hub", setup).await;
    let mut atm = Peer::connect(&cfg("atm-1"), devices[0].clone(), true).await;
    let mut phone = Peer::connect(&cfg("phone-1"), TestDevice::new("phone-1"), false).await;

    let login = login_message(&phone.dev, "hanako", Some(near_atm()));
    let sent = phone.phone(&net, login).await;
    let answer = phone.push(&net).await;
    assert_eq!(answer.re.as_deref(), Some(sent.jti.as_str()));
    assert!(
        matches!(answer.msg, PhonePush::LoginResult(_)),
        "{answer:?}"
    );

    phone
        .phone(
            &net,
            PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                account: "hanako".into(),
                amount: Amount::new(30_000, Currency::JPY),
            }),
        )
        .await;
    let code = match phone.push(&net).await.msg {
        PhonePush::CodeIssued(c) => c,
        other => panic!("{other:?}"),
    };
    assert!(
        !code.qr_png.is_empty(),
        "the push carries the PNG under the size limit"
    );

    let presented = atm
        .atm(
            &net,
            AtmUp::CodePresented(CodePresented {
                token: code.token.clone(),
            }),
        )
        .await;
    assert!(matches!(
        atm.down(&net).await.msg,
        AtmDown::AwaitConfirmation(_)
    ));
    match atm.down(&net).await.msg {
        AtmDown::Ack(a) => assert_eq!(a.ids, vec![presented.jti]),
        other => panic!("{other:?}"),
    }
    let req = match phone.push(&net).await.msg {
        PhonePush::ConfirmRequest(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(!req.warnings.is_empty());

    let msg = confirm_message(&phone.dev, &req, Some(PIN), Some(near_atm()));
    phone.phone(&net, msg).await;
    let order = match atm.down(&net).await.msg {
        AtmDown::DispenseOrder(o) => o,
        other => panic!("{other:?}"),
    };
    assert_eq!(order.amount.minor, 30_000);
    assert!(order.notes_match_amount());

    let report = atm
        .atm(
            &net,
            report_message(&order, DispenseOutcome::Dispensed, 30_000),
        )
        .await;
    match atm.down(&net).await.msg {
        AtmDown::Ack(a) => assert_eq!(a.ids, vec![report.jti.clone()]),
        other => panic!("{other:?}"),
    }
    match phone.push(&net).await.msg {
        PhonePush::Receipt(r) => {
            assert_eq!(r.status, ReceiptStatus::Completed);
            assert_eq!(r.balance.minor, 70_000);
        }
        other => panic!("{other:?}"),
    }
    // The outbox resends the report (no Ack seen, say): acknowledged again, applied once.
    let again = atm.dev.seal(&report);
    atm.send_raw(again).await;
    match atm.down(&net).await.msg {
        AtmDown::Ack(a) => assert_eq!(a.ids, vec![report.jti]),
        other => panic!("{other:?}"),
    }

    // A stop finishes the queue and disconnects at once (nothing keeps the writer waiting).
    let stopping = std::time::Instant::now();
    let hub = net.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the hub took {:?} to stop",
        stopping.elapsed()
    );
    let view = admin::show_account(hub.store(), "hanako").unwrap();
    assert_eq!((view.available, view.held), (70_000, 0));
    assert!(admin::ledger_check(hub.store()).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_over_the_embedded_broker() {
    let broker = qrcash_hub::embedded_broker::start(0).expect("embedded broker");
    let url = broker.url();
    withdrawal(|_| BrokerConfig::plain(url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_over_mosquitto() {
    let broker = Mosquitto::start();
    let url = broker.url();
    withdrawal(|_| BrokerConfig::plain(url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_over_mosquitto_with_tls_client_certificates_and_the_acl() {
    let pki = TestPki::default();
    let broker = pki.locked_down_broker();
    let url = broker.url();
    withdrawal(|cn| pki.client_config(&url, cn)).await;
}

/// Two ATMs publish the same code at the same moment, many times: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_atms_racing_for_one_code_over_the_broker_exactly_one_wins() {
    let broker = qrcash_hub::embedded_broker::start(0).expect("embedded broker");
    let cfg = BrokerConfig::plain(broker.url());
    let (net, devices) = Net::start(cfg.clone(), "hub", |rig| {
        rig.account("hanako", 10_000_000);
        vec![rig.atm("atm-1"), rig.atm("atm-2")]
    })
    .await;
    let mut atm1 = Peer::connect(&cfg, devices[0].clone(), true).await;
    let mut atm2 = Peer::connect(&cfg, devices[1].clone(), true).await;
    let mut phone = Peer::connect(&cfg, TestDevice::new("phone-1"), false).await;
    let login = login_message(&phone.dev, "hanako", Some(near_atm()));
    phone.phone(&net, login).await;
    phone.push(&net).await;
    for round in 0..15 {
        phone
            .phone(
                &net,
                PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                    account: "hanako".into(),
                    amount: Amount::new(1_000, Currency::JPY),
                }),
            )
            .await;
        let code = match phone.push(&net).await.msg {
            PhonePush::CodeIssued(c) => c,
            other => panic!("{other:?}"),
        };
        let msg = AtmUp::CodePresented(CodePresented { token: code.token });
        let b1 = atm1.dev.message(&net.hub_id, net.now(), msg.clone());
        let b2 = atm2.dev.message(&net.hub_id, net.now(), msg);
        let (t1, t2) = (atm1.dev.atm_up(), atm2.dev.atm_up());
        let (c1, c2) = (atm1.client.client().clone(), atm2.client.client().clone());
        let qos = rumqttc::QoS::AtLeastOnce;
        let (r1, r2) = tokio::join!(
            c1.publish(t1, qos, false, b1),
            c2.publish(t2, qos, false, b2)
        );
        r1.unwrap();
        r2.unwrap();
        let first1 = atm1.down(&net).await.msg;
        let first2 = atm2.down(&net).await.msg;
        let won = |m: &AtmDown| matches!(m, AtmDown::AwaitConfirmation(_));
        let lost = |m: &AtmDown| matches!(m, AtmDown::Rejected(r) if r.reason == RejectReason::CodeAlreadyUsed);
        assert!(
            (won(&first1) && lost(&first2)) || (lost(&first1) && won(&first2)),
            "round {round}: {first1:?} / {first2:?}"
        );
        // The winner also gets its Ack; the phone gets exactly one confirmation request.
        let winner = if won(&first1) { &mut atm1 } else { &mut atm2 };
        assert!(matches!(winner.down(&net).await.msg, AtmDown::Ack(_)));
        assert!(matches!(
            phone.push(&net).await.msg,
            PhonePush::ConfirmRequest(_)
        ));
    }
    assert!(phone.silent(Duration::from_millis(200)).await);
    net.stop().await;
}

/// Many messages at once go through group commit; every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_heartbeats_is_committed_in_groups_and_every_one_is_acked() {
    let broker = Mosquitto::start();
    let cfg = BrokerConfig::plain(broker.url());
    let (net, devices) = Net::start(cfg.clone(), "hub", setup).await;
    let mut atm = Peer::connect(&cfg, devices[0].clone(), true).await;
    let beat = AtmUp::Heartbeat(Heartbeat {
        state: qrcash_protocol::messages::AtmState::Idle,
        cassettes: vec![],
        outbox: 0,
        software: "test".into(),
    });
    let client = atm.client.client().clone();
    let n = 200;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..n {
        let c = atm.dev.claims(&net.hub_id, net.now(), beat.clone());
        ids.insert(c.jti.clone());
        client
            .publish(
                atm.dev.atm_up(),
                rumqttc::QoS::AtLeastOnce,
                false,
                atm.dev.seal(&c),
            )
            .await
            .unwrap();
    }
    for _ in 0..n {
        match atm.down(&net).await.msg {
            AtmDown::Ack(a) => assert!(ids.remove(&a.ids[0]), "unexpected ack {a:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(ids.is_empty());
    let stats = net.handle.stats();
    assert_eq!(stats.handled, n as u64);
    // Each commit waits for an fsync while the burst keeps arriving: messages share
    // transactions.
    assert!(stats.batches < stats.handled, "no group commit: {stats:?}");
    let hub = net.stop().await;
    assert_eq!(
        qrcash_hub::store::audit::count(hub.store().db(), "accepted").unwrap(),
        n as u64
    );
    let _ = WAIT;
}

/// The broker restarts: the hub reconnects (with backoff), subscribes again, and a device
/// that resends its message until acknowledged (as the agent's outbox does) gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_reconnects_and_resubscribes_after_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let cfg = BrokerConfig::plain(broker.url());
    let (net, devices) = Net::start(cfg.clone(), "hub", setup).await;
    let mut atm = Peer::connect(&cfg, devices[0].clone(), true).await;
    let beat = AtmUp::Heartbeat(Heartbeat {
        state: qrcash_protocol::messages::AtmState::Idle,
        cassettes: vec![],
        outbox: 0,
        software: "test".into(),
    });
    atm.atm(&net, beat.clone()).await;
    assert!(matches!(atm.down(&net).await.msg, AtmDown::Ack(_)));

    broker.stop();
    drop(atm);
    broker.start_again();
    let claims = {
        let mut dev = devices[0].clone();
        dev.seq = 100;
        let c = dev.claims(&net.hub_id, net.now(), beat);
        (dev, c)
    };
    let (dev, sent) = claims;
    let bytes = dev.seal(&sent);
    let mut acked = false;
    for _ in 0..50 {
        let Ok(mut client) = qrcash_tests::mqtt::TestClient::connect(&cfg, "atm-1").await else {
            continue;
        };
        client
            .subscribe(&qrcash_protocol::topics::atm_down("atm-1"))
            .await;
        client.publish(&dev.atm_up(), bytes.clone()).await;
        if let Some((_, payload)) = client.next_publish(Duration::from_millis(500)).await {
            let out = qrcash_hub::handler::Outgoing::new(
                qrcash_protocol::topics::atm_down("atm-1"),
                payload,
            );
            let answer: qrcash_protocol::Claims<AtmDown> =
                qrcash_hub::testkit::open(&out, &net.hub_key);
            match answer.msg {
                AtmDown::Ack(a) => {
                    assert_eq!(a.ids, vec![sent.jti.clone()]);
                    acked = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(acked, "the hub never came back:\n{}", broker.log());
    assert!(net.handle.is_ready());
    let hub = net.stop().await;
    // Applied once however often it was resent.
    let n: i64 = hub
        .store()
        .conn()
        .expect("a SQLite hub")
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE jti = ?1 AND outcome = 'accepted'",
            [&sent.jti],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

/// The service's sweeper ends an unconfirmed session: the ATM gets `Abort(timeout)`, the
/// phone a cancelled receipt, and a confirmation after that is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_aborts_an_unconfirmed_session_over_the_broker() {
    let broker = qrcash_hub::embedded_broker::start(0).expect("embedded broker");
    let cfg = BrokerConfig::plain(broker.url());
    let (net, devices) =
        Net::start_sweeping(cfg.clone(), "hub", Duration::from_millis(50), setup).await;
    let mut atm = Peer::connect(&cfg, devices[0].clone(), true).await;
    let mut phone = Peer::connect(&cfg, TestDevice::new("phone-1"), false).await;
    let login = login_message(&phone.dev, "hanako", Some(near_atm()));
    phone.phone(&net, login).await;
    phone.push(&net).await;
    phone
        .phone(
            &net,
            PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                account: "hanako".into(),
                amount: Amount::new(10_000, Currency::JPY),
            }),
        )
        .await;
    let code = match phone.push(&net).await.msg {
        PhonePush::CodeIssued(c) => c,
        other => panic!("{other:?}"),
    };
    atm.atm(
        &net,
        AtmUp::CodePresented(CodePresented { token: code.token }),
    )
    .await;
    assert!(matches!(
        atm.down(&net).await.msg,
        AtmDown::AwaitConfirmation(_)
    ));
    assert!(matches!(atm.down(&net).await.msg, AtmDown::Ack(_)));
    let req = match phone.push(&net).await.msg {
        PhonePush::ConfirmRequest(r) => r,
        other => panic!("{other:?}"),
    };
    // Let the publisher confirm what it sent, so that the jump below finds nothing left in
    // the outbox and the abort is the only message that follows it.
    tokio::time::sleep(qrcash_hub::service::CONFIRM_AFTER + Duration::from_secs(1)).await;
    net.clock.advance(Duration::from_secs(121));
    match atm.down(&net).await.msg {
        AtmDown::Abort(a) => {
            assert_eq!(a.tx_id, req.tx_id);
            assert_eq!(a.reason, qrcash_protocol::messages::AbortReason::Timeout);
        }
        other => panic!("{other:?}"),
    }
    match phone.push(&net).await.msg {
        PhonePush::Receipt(r) => assert_eq!(r.status, ReceiptStatus::Cancelled),
        other => panic!("{other:?}"),
    }
    let msg = confirm_message(&phone.dev, &req, Some(PIN), Some(near_atm()));
    phone.phone(&net, msg).await;
    match phone.push(&net).await.msg {
        PhonePush::Rejected(r) => {
            assert!(matches!(r.reason, RejectReason::WrongState { .. }), "{r:?}")
        }
        other => panic!("{other:?}"),
    }
    net.stop().await;
}

/// An answer whose connection dropped before it was confirmed (published, then the link up
/// for `CONFIRM_AFTER`) stays in the outbox and goes out again once the hub is back; one that
/// was confirmed does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_connection_dropped_before_it_was_confirmed_goes_out_again() {
    let mut broker = Mosquitto::start();
    let cfg = BrokerConfig::plain(broker.url());
    let (net, _) = Net::start_sweeping(cfg.clone(), "hub", Duration::from_millis(50), setup).await;
    let mut phone = Peer::connect(&cfg, TestDevice::new("phone-1"), false).await;
    let login = login_message(&phone.dev, "hanako", Some(near_atm()));
    phone.phone(&net, login).await;
    assert!(matches!(
        phone.push(&net).await.msg,
        PhonePush::LoginResult(_)
    ));
    // Confirmed: the link stays up past CONFIRM_AFTER.
    tokio::time::sleep(qrcash_hub::service::CONFIRM_AFTER + Duration::from_secs(1)).await;
    let register = PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
        account: "hanako".into(),
        amount: Amount::new(10_000, Currency::JPY),
    });
    phone.phone(&net, register).await;
    let first = match phone.push(&net).await.msg {
        PhonePush::CodeIssued(c) => c,
        other => panic!("{other:?}"),
    };
    // The broker goes away before the code's row could be confirmed.
    broker.stop();
    drop(phone);
    broker.start_again();
    assert!(
        net.handle.wait_ready(WAIT).await,
        "the hub did not come back"
    );
    let mut phone = Peer::connect(&cfg, TestDevice::new("phone-1"), false).await;
    assert!(
        phone.silent(Duration::from_millis(300)).await,
        "nothing is due yet"
    );
    net.clock.advance(Duration::from_secs(10));
    match phone.push(&net).await.msg {
        PhonePush::CodeIssued(c) => assert_eq!(c.tx_id, first.tx_id),
        other => panic!("only the unconfirmed code goes out again, not {other:?}"),
    }
    // This copy went out on a connection that stayed up: confirmed, never sent again.
    tokio::time::sleep(qrcash_hub::service::CONFIRM_AFTER + Duration::from_secs(2)).await;
    net.clock.advance(Duration::from_secs(30));
    assert!(phone.silent(Duration::from_millis(500)).await);
    net.stop().await;
}

/// An instance that commits its answers and dies before publishing them loses nothing:
/// another instance on the same database publishes them from the outbox, each in a fresh
/// envelope, and stops once they went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_committed_by_an_instance_that_died_reaches_its_receiver() {
    use qrcash_hub::store::Store;
    use qrcash_hub::testkit::{Rig, open, test_config};
    use qrcash_protocol::Claims;

    let broker = qrcash_hub::embedded_broker::start(0).expect("embedded broker");
    let cfg = BrokerConfig::plain(broker.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.sqlite");

    // Instance A decides and commits, then dies before anything reaches the broker.
    let mut a = Rig::new(Store::open(&path).expect("database"), test_config(), 7).with_outbox();
    setup(&mut a);
    let mut dev = TestDevice::new("phone-1");
    let login = a.login(&mut dev, "hanako");
    assert!(login.result.is_ok(), "{:?}", login.result);
    let register = a.phone(
        &mut dev,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: Amount::new(10_000, Currency::JPY),
        }),
    );
    let first: Vec<Claims<PhonePush>> = login
        .outgoing
        .iter()
        .chain(&register.outgoing)
        .map(|o| open(o, &a.hub_key()))
        .collect();
    assert_eq!(first.len(), 2);
    drop(a);

    // Instance B on the same database publishes them once they are due.
    let mut phone = Peer::connect(&cfg, dev, false).await;
    let b = Rig::new(Store::open(&path).expect("database"), test_config(), 8);
    let net = Net::start_rig(cfg.clone(), "hub-b", Duration::from_millis(50), b, dir).await;
    assert!(
        phone.silent(Duration::from_millis(500)).await,
        "not before outbox_retry_s"
    );
    net.clock.advance(Duration::from_secs(10));
    for want in &first {
        let got = phone.push(&net).await;
        assert_eq!(
            (&got.msg, &got.re, got.exp),
            (&want.msg, &want.re, want.exp)
        );
        assert!(got.seq > want.seq && got.jti != want.jti);
    }
    assert!(matches!(first[1].msg, PhonePush::CodeIssued(_)));

    // Confirmed once they went out (the link stayed up): never sent again.
    tokio::time::sleep(qrcash_hub::service::CONFIRM_AFTER + Duration::from_secs(2)).await;
    net.clock.advance(Duration::from_secs(30));
    assert!(phone.silent(Duration::from_secs(1)).await, "sent again");
    let hub = net.stop().await;
    let backlog = qrcash_hub::store::outbox::backlog(hub.store().db()).unwrap();
    assert_eq!(backlog, (0, None));
}
