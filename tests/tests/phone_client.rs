//! The reference phone client against a real broker and a scripted stand-in for the hub:
//! requests are signed by the device key with a persisted, increasing `seq`; answers are
//! matched by `re`; forged, misaddressed and replayed pushes never reach the caller.

use std::sync::Arc;
use std::time::Duration;

use qrcash_io::BrokerConfig;
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings};
use qrcash_protocol::envelope::{self, Claims};
use qrcash_protocol::messages::{LoginResult, PhonePush, PhoneUp};
use qrcash_protocol::{MAX_UPLINK_BYTES, PrivateKey, PublicKey, Signer, SystemClock, topics};
use qrcash_tests::broker::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A raw MQTT client standing in for the hub: yields (topic, payload) of phone up-links.
async fn fake_hub(port: u16) -> (AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("fake-hub", "127.0.0.1", port), 16);
    let (tx, rx) = mpsc::channel(16);
    let (sub_tx, mut sub_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec())).await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
        .subscribe("qrcash/v1/phone/+/up", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), sub_rx.recv())
        .await
        .expect("fake hub subscribed");
    (client, rx)
}

fn push(hub: &Signer, to: &str, seq: u64, re: &str, msg: PhonePush) -> Vec<u8> {
    let now = qrcash_protocol::Clock::now(&SystemClock);
    hub.seal(&Claims::new(hub.id(), to, seq, now, Duration::from_secs(60), msg).in_reply_to(re))
        .into_bytes()
}

fn login_result() -> PhonePush {
    PhonePush::LoginResult(LoginResult {
        account: "hanako".into(),
        device_id: "dev-1".into(),
        new_device: false,
        restriction: None,
    })
}

#[tokio::test]
async fn login_round_trip_refuses_forged_and_replayed_pushes() {
    let broker = Mosquitto::start();
    let (hub_client, mut uplinks) = fake_hub(broker.port()).await;
    let hub = Signer::new("hub", PrivateKey::generate());
    let state = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(state.path()).unwrap();
    let key = store.device_key().unwrap();
    let mut phone = PhoneClient::connect(
        PhoneSettings::new("dev-1", BrokerConfig::plain(broker.url())),
        key.clone(),
        hub.key().public().clone(),
        store,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();

    let sealer = qrcash_phone::requests::sealer(hub.key().public(), "dev-1", &key);
    let login = qrcash_phone::requests::login("hanako", "pw", "test", &key, None, &sealer).unwrap();
    let jti = phone.send(login).await.unwrap();
    let (topic, bytes) = tokio::time::timeout(Duration::from_secs(5), uplinks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, topics::phone_up("dev-1"));
    // The hub's view: proof of possession with the key inside the Login.
    let sealed = envelope::Sealed::parse(&bytes, MAX_UPLINK_BYTES).unwrap();
    let peek: Claims<PhoneUp> = sealed.peek().unwrap();
    let PhoneUp::Login(login) = &peek.msg else {
        panic!("not a login")
    };
    let device_key = PublicKey::from_jwk(&login.device.public_key).unwrap();
    assert_eq!(device_key.kid(), sealed.kid());
    let claims: Claims<PhoneUp> = sealed.open(&device_key).unwrap();
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str(), claims.seq),
        ("dev-1", "hub", 1)
    );
    assert_eq!(claims.jti, jti);

    let push_topic = topics::phone_push("dev-1");
    let publish = |bytes: Vec<u8>| {
        let c = hub_client.clone();
        let t = push_topic.clone();
        async move { c.publish(t, QoS::AtLeastOnce, false, bytes).await.unwrap() }
    };
    // A forged answer (right ids, wrong key), one for another device, then the real one,
    // then the real one replayed.
    let mallory = Signer::new("hub", PrivateKey::generate());
    publish(push(&mallory, "dev-1", 1, &jti, login_result())).await;
    publish(push(&hub, "dev-2", 2, &jti, login_result())).await;
    let genuine = push(&hub, "dev-1", 3, &jti, login_result());
    publish(genuine.clone()).await;
    publish(genuine).await;
    let reply = phone.reply_to(&jti, Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply, login_result());
    assert_eq!(
        phone.rejected_pushes(),
        2,
        "forged and misaddressed refused"
    );
    // The replay is refused too; nothing else arrives, and the timeout says why.
    let err = phone
        .next_push("anything", Duration::from_millis(500), |_| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, qrcash_phone::PhoneError::Refused { refused: 1, last, .. }
            if last.starts_with("push refused: ")),
        "{err}"
    );
    // A wait in which nothing at all arrives is a plain timeout.
    let err = phone
        .next_push("anything", Duration::from_millis(300), |_| true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, qrcash_phone::PhoneError::Timeout { .. }),
        "{err}"
    );
    assert_eq!(phone.rejected_pushes(), 3, "replay refused");

    // A Rejected answer becomes a typed error; seq keeps increasing.
    let jti2 = phone
        .send(PhoneUp::BalanceQuery(
            qrcash_protocol::messages::BalanceQuery {
                account: "hanako".into(),
                history: 0,
            },
        ))
        .await
        .unwrap();
    let (_, bytes) = uplinks.recv().await.unwrap();
    let claims: Claims<PhoneUp> = envelope::Sealed::parse(&bytes, MAX_UPLINK_BYTES)
        .unwrap()
        .open(&device_key)
        .unwrap();
    assert_eq!(claims.seq, 2);
    publish(push(
        &hub,
        "dev-1",
        4,
        &jti2,
        PhonePush::Rejected(qrcash_protocol::messages::Rejected {
            reason: qrcash_protocol::RejectReason::NotLoggedIn,
            message: "log in first".into(),
        }),
    ))
    .await;
    let err = phone
        .reply_to(&jti2, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            qrcash_phone::PhoneError::Rejected {
                reason: qrcash_protocol::RejectReason::NotLoggedIn,
                ..
            }
        ),
        "{err}"
    );
    phone.shutdown().await;

    // After a restart the counter and the hub window carry on from disk.
    let store = DeviceStore::open(state.path()).unwrap();
    assert_eq!(store.last_seq(), 2);
    assert_eq!(store.hub_window().highest, 4);
}

/// The hub's key set (`docs/protocol.md` §3): the phone learns the new key from the set its
/// provisioned key endorsed, seals to it, keeps it across a restart, and a timeout explains a
/// set it had to refuse.
#[tokio::test]
async fn the_phone_learns_a_new_hub_key_from_the_old_keys_endorsement() {
    use qrcash_protocol::keyset::{HubKeys, KeySet};
    let broker = Mosquitto::start();
    let (hub_client, _uplinks) = fake_hub(broker.port()).await;
    let old = PrivateKey::generate();
    let new = PrivateKey::generate();
    let now = qrcash_protocol::Clock::now(&SystemClock);
    let state = tempfile::tempdir().unwrap();
    let connect = || async {
        let store = DeviceStore::open(state.path()).unwrap();
        let key = store.device_key().unwrap();
        PhoneClient::connect(
            PhoneSettings::new("dev-1", BrokerConfig::plain(broker.url())),
            key,
            old.public().clone(),
            store,
            Arc::new(SystemClock),
        )
        .await
        .unwrap()
    };
    let mut phone = connect().await;

    // Mallory's set: refused, and the next timeout says so.
    let mallory = PrivateKey::generate();
    let forged = HubKeys::new(&KeySet::new("hub", now, mallory.public(), &[]), &[&mallory]);
    hub_client
        .publish(topics::HUB_KEYS, QoS::AtLeastOnce, true, forged.to_bytes())
        .await
        .unwrap();
    let err = phone
        .next_push("anything", Duration::from_secs(1), |_| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, qrcash_phone::PhoneError::Refused { last, .. }
            if last.contains("no endorsement by a trusted key")),
        "{err}"
    );
    assert_eq!(&phone.sealing_key(), old.public());

    // The genuine rotation.
    let set = KeySet::new("hub", now, new.public(), &[old.public().clone()]);
    hub_client
        .publish(
            topics::HUB_KEYS,
            QoS::AtLeastOnce,
            true,
            HubKeys::new(&set, &[&new, &old]).to_bytes(),
        )
        .await
        .unwrap();
    let _ = phone
        .next_push("anything", Duration::from_millis(500), |_| true)
        .await;
    assert_eq!(&phone.sealing_key(), new.public());
    assert!(phone.hub_keys().contains(new.public()));
    phone.shutdown().await;

    // A restart knows it before any key set arrives.
    hub_client
        .publish(topics::HUB_KEYS, QoS::AtLeastOnce, true, Vec::new())
        .await
        .unwrap();
    let phone = connect().await;
    assert_eq!(&phone.sealing_key(), new.public());
    assert_eq!(
        phone.hub_keys(),
        vec![old.public().clone(), new.public().clone()]
    );
    phone.shutdown().await;
}

/// A request whose answer does not come is published again, the very same signed bytes
/// (same `jti`, same `seq`), every `resend_after` while it is valid; the answer to the
/// repeat completes the request.
#[tokio::test]
async fn a_request_without_an_answer_is_sent_again_until_answered() {
    let broker = Mosquitto::start();
    let (hub_client, mut uplinks) = fake_hub(broker.port()).await;
    let hub = Signer::new("hub", PrivateKey::generate());
    let settings = PhoneSettings {
        resend_after: Duration::from_millis(300),
        ..PhoneSettings::new("dev-1", BrokerConfig::plain(broker.url()))
    };
    let mut phone = PhoneClient::connect(
        settings,
        PrivateKey::generate(),
        hub.key().public().clone(),
        DeviceStore::in_memory(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    // The hub stand-in drops the first copy and answers the second.
    let answering = tokio::spawn(async move {
        let (_, first) = uplinks.recv().await.unwrap();
        let (_, second) = uplinks.recv().await.unwrap();
        assert_eq!(first, second, "a resend is the same signed message");
        let sealed = envelope::Sealed::parse(&second, MAX_UPLINK_BYTES).unwrap();
        let claims: Claims<PhoneUp> = sealed.peek().unwrap();
        hub_client
            .publish(
                topics::phone_push("dev-1"),
                QoS::AtLeastOnce,
                false,
                push(&hub, "dev-1", 1, &claims.jti, login_result()),
            )
            .await
            .unwrap();
        (hub_client, uplinks)
    });
    let started = std::time::Instant::now();
    let answer = phone
        .request(
            PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
                account: "hanako".into(),
                history: 0,
            }),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(answer, login_result());
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_hub_client, mut uplinks) = answering.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(700), uplinks.recv())
            .await
            .is_err(),
        "no resend after the answer"
    );
    phone.shutdown().await;
}

/// The next up-link the hub stand-in received.
async fn next_up(uplinks: &mut mpsc::Receiver<(String, Vec<u8>)>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), uplinks.recv())
        .await
        .expect("an up-link")
        .expect("open")
        .1
}

/// The phone's outbox: a decline the hub never heard (its stand-in ignores it, as a hub
/// restarting or moving to another broker node would) is published again by the same run,
/// stays in `outbox.json` when the app is closed, goes out again when the next run connects,
/// and leaves the outbox only when the withdrawal's receipt comes. Then nothing more is sent.
#[tokio::test]
async fn an_unanswered_decline_is_sent_again_across_a_restart_until_its_receipt_comes() {
    use qrcash_protocol::messages::{Receipt, ReceiptKind, ReceiptStatus};
    use qrcash_protocol::{Amount, Currency, TxId};
    let broker = Mosquitto::start();
    let (hub_client, mut uplinks) = fake_hub(broker.port()).await;
    let hub = Signer::new("hub", PrivateKey::generate());
    let dir = tempfile::tempdir().unwrap();
    let settings = PhoneSettings {
        resend_after: Duration::from_millis(300),
        ..PhoneSettings::new("dev-1", BrokerConfig::plain(broker.url()))
    };
    let connect = |settings: PhoneSettings| {
        let store = DeviceStore::open(dir.path()).unwrap();
        let key = store.device_key().unwrap();
        PhoneClient::connect(
            settings,
            key,
            hub.key().public().clone(),
            store,
            Arc::new(SystemClock),
        )
    };

    let mut phone = connect(settings.clone()).await.unwrap();
    let tx_id = TxId::random();
    phone.decline(tx_id, false).await.unwrap();
    let first = next_up(&mut uplinks).await;
    // Waiting for the receipt, the same run sends it again.
    let err = phone
        .await_receipt(&tx_id.to_string(), None, Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(
        matches!(err, qrcash_phone::PhoneError::Timeout { .. }),
        "{err}"
    );
    assert_eq!(
        next_up(&mut uplinks).await,
        first,
        "the same signed message again"
    );
    phone.shutdown().await;
    let outbox = std::fs::read_to_string(dir.path().join("outbox.json")).unwrap();
    assert!(outbox.contains(&tx_id.to_string()), "{outbox}");
    while matches!(
        tokio::time::timeout(Duration::from_millis(100), uplinks.recv()).await,
        Ok(Some(_))
    ) {}

    // The app starts again: the decline goes out as soon as it is connected.
    let mut phone = connect(settings).await.unwrap();
    assert_eq!(next_up(&mut uplinks).await, first, "resent by the next run");
    let now = qrcash_protocol::Clock::now(&SystemClock);
    let receipt = Receipt {
        reference: tx_id.to_string(),
        kind: ReceiptKind::Withdrawal,
        requested: Amount::new(10_000, Currency::JPY),
        settled: Amount::new(0, Currency::JPY),
        status: ReceiptStatus::Cancelled,
        balance: Amount::new(100_000, Currency::JPY),
        at: now,
    };
    let sealed = hub
        .seal(&Claims::new(
            hub.id(),
            "dev-1",
            1,
            now,
            Duration::from_secs(60),
            PhonePush::Receipt(receipt.clone()),
        ))
        .into_bytes();
    hub_client
        .publish(topics::phone_push("dev-1"), QoS::AtLeastOnce, false, sealed)
        .await
        .unwrap();
    let got = phone
        .await_receipt(&tx_id.to_string(), None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, receipt);
    assert!(
        !dir.path().join("outbox.json").exists(),
        "answered: the outbox is empty"
    );
    while matches!(
        tokio::time::timeout(Duration::from_millis(100), uplinks.recv()).await,
        Ok(Some(_))
    ) {}
    assert!(
        tokio::time::timeout(Duration::from_millis(700), uplinks.recv())
            .await
            .is_err(),
        "nothing sent after the receipt"
    );
    phone.shutdown().await;
}
