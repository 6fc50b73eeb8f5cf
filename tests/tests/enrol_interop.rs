//! Enrolment by one-time code (`docs/protocol.md` §6.6) against an independent board: a
//! Python client written from the document (`tests/python/enrol.py`, pyca/cryptography and
//! the standard library's `hmac`) enrols through the real hub over Mosquitto, checks the
//! hub's answer proof and signature itself, and is then answered under its new key; a wrong
//! code is refused and enrols nothing.

use std::time::Duration;

use qrcash_hub::admin;
use qrcash_hub::store::Store;
use qrcash_hub::store::registry::PendingAtm;
use qrcash_io::BrokerConfig;
use qrcash_protocol::messages::AtmDown;
use qrcash_protocol::{Clock, MAX_DOWNLINK_BYTES, Position, Sealed, SystemClock, topics};
use qrcash_tests::broker::Mosquitto;
use qrcash_tests::mqtt::TestClient;
use qrcash_tests::python;

const ATM: &str = "atm-py";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_board_enrols_through_the_real_hub() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = qrcash_tests::hub::start(dir.path(), &broker.url(), 11, "atm-1").await;
    let now = SystemClock.now();
    hub.clock.set(now);
    let code = {
        let mut store = Store::open(&dir.path().join("hub.sqlite")).unwrap();
        admin::issue_enrolment_code(
            &mut store,
            ATM,
            Some(PendingAtm {
                name: "Python 1".into(),
                address: "Shibuya".into(),
                position: Position::new(35.6595, 139.7005, 0.0),
                denominations: vec![10_000, 1_000],
            }),
            3600,
            now,
        )
        .unwrap()
    };
    let mut board = TestClient::connect(&BrokerConfig::plain(broker.url()), ATM)
        .await
        .unwrap();
    board.subscribe(&topics::atm_down(ATM)).await;
    let ask = |code: &str, seq: u64| -> serde_json::Value {
        let out = python::ok(
            "enrol.py",
            &[
                "request",
                ATM,
                "hub",
                code,
                &seq.to_string(),
                &now.to_string(),
            ],
            b"",
        );
        serde_json::from_str(&out).unwrap()
    };

    // A wrong code first: refused, counted, nothing enrolled.
    let wrong = ask("AAAA-BBBB-CCCC-DDDD", 1);
    board
        .publish(&topics::atm_up(ATM), wrong["jws"].as_str().unwrap())
        .await;
    let (_, answer) = board
        .next_publish(Duration::from_secs(10))
        .await
        .expect("an answer");
    let out = python::run(
        "enrol.py",
        &[
            "answer",
            ATM,
            "AAAA-BBBB-CCCC-DDDD",
            wrong["kid"].as_str().unwrap(),
            wrong["nonce"].as_str().unwrap(),
            wrong["jti"].as_str().unwrap(),
        ],
        &answer,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refused["refused"], "enrolment_refused");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("4 attempts left")
    );
    {
        let store = Store::open(&dir.path().join("hub.sqlite")).unwrap();
        assert!(
            qrcash_hub::store::rows::atm(store.db(), ATM)
                .unwrap()
                .is_none(),
            "a wrong code enrols nothing"
        );
    }

    // The right code: Python checks the hub's proof and signature and learns its key.
    let req = ask(&code.grouped(), 2);
    board
        .publish(&topics::atm_up(ATM), req["jws"].as_str().unwrap())
        .await;
    let (_, answer) = board
        .next_publish(Duration::from_secs(10))
        .await
        .expect("an answer");
    let learned: serde_json::Value = serde_json::from_str(&python::ok(
        "enrol.py",
        &[
            "answer",
            ATM,
            code.canonical(),
            req["kid"].as_str().unwrap(),
            req["nonce"].as_str().unwrap(),
            req["jti"].as_str().unwrap(),
        ],
        &answer,
    ))
    .unwrap();
    assert_eq!(learned["hub_id"], "hub");
    assert_eq!(
        learned["hub_keys"],
        serde_json::json!([hub.hub_key.kid().as_str()])
    );
    assert_eq!(learned["denominations"], serde_json::json!([10_000, 1_000]));

    // Under its new key, the Python board's heartbeat is acknowledged.
    let heartbeat = python::ok(
        "enrol.py",
        &[
            "sign",
            ATM,
            "hub",
            req["seed"].as_str().unwrap(),
            "3",
            &now.to_string(),
        ],
        br#"{"type":"Heartbeat","state":"idle","cassettes":[],"outbox":0,"software":"enrol.py"}"#,
    );
    board
        .publish(&topics::atm_up(ATM), heartbeat.as_str())
        .await;
    let jti = Sealed::parse(heartbeat.as_bytes(), usize::MAX)
        .unwrap()
        .peek::<serde_json::Value>()
        .unwrap()
        .jti;
    let (_, ack) = board
        .next_publish(Duration::from_secs(10))
        .await
        .expect("an ack");
    let ack = Sealed::parse(&ack, MAX_DOWNLINK_BYTES)
        .unwrap()
        .open::<AtmDown>(&hub.hub_key)
        .unwrap();
    match ack.msg {
        AtmDown::Ack(a) => assert_eq!(a.ids, [jti]),
        other => panic!("not an Ack: {other:?}"),
    }
}
