//! The two-broker topology of `deploy/mosquitto/` as shipped: phones on the edge broker
//! (`edge/mosquitto.conf`, `edge/acl.conf`), bridged over TLS with its own client certificate
//! to the core broker (`mosquitto.conf`, `acl.conf`) where the hub and the ATMs are. Only
//! the paths, ports and the bridge's address are moved into the test's folders.
//!
//! Proves that the bridge carries exactly the phone topics (up-links out, pushes and the
//! hub's key set in), that a client of the edge can neither write nor read an ATM's or the
//! hub's topics nor another phone's, and that a whole withdrawal works with the phone on the
//! edge, across a restart of the edge broker in the middle (the phone resends its request).

use std::sync::Arc;
use std::time::Duration;

use qrcash_hub::testkit::{SHIBUYA, password};
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings};
use qrcash_protocol::messages::ReceiptStatus;
use qrcash_protocol::{Amount, Currency, Position, PrivateKey, topics};
use qrcash_tests::broker::{Mosquitto, MosquittoConfig};
use qrcash_tests::customer::show_and_confirm;
use qrcash_tests::mqtt::TestClient;
use qrcash_tests::pki::{
    EDGE_ACL, EDGE_BROKER_CONF, PRODUCTION_ACL, PRODUCTION_BROKER_CONF, TestPki,
};

const T: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(500);
const ATM: &str = "atm-shibuya-1";

fn core(pki: &TestPki) -> Mosquitto {
    Mosquitto::start_with(MosquittoConfig {
        tls: Some(pki.broker_tls()),
        acl: Some(PRODUCTION_ACL.to_owned()),
        verbatim: Some(PRODUCTION_BROKER_CONF.to_owned()),
        ..MosquittoConfig::default()
    })
}

/// The edge broker, its bridge pointed at `core` with a certificate whose CN is
/// `bridge-edge`.
fn edge(pki: &TestPki, core: &Mosquitto) -> Mosquitto {
    let (cert, key) = pki.client_pem("bridge-edge");
    Mosquitto::start_with(MosquittoConfig {
        tls: Some(pki.broker_tls()),
        acl: Some(EDGE_ACL.to_owned()),
        verbatim: Some(EDGE_BROKER_CONF.to_owned()),
        files: vec![
            ("core-ca.pem".into(), pki.ca_pem().to_owned()),
            ("bridge.pem".into(), cert),
            ("bridge.key".into(), key),
        ],
        rewrite: vec![(
            "core.qrcash.internal:8883".into(),
            format!("localhost:{}", core.port()),
        )],
        ..MosquittoConfig::default()
    })
}

async fn client(pki: &TestPki, broker: &Mosquitto, cn: &str) -> TestClient {
    TestClient::connect(&pki.client_config(&broker.url(), cn), cn)
        .await
        .unwrap_or_else(|e| panic!("{cn} could not connect: {e}\n{}", broker.log()))
}

/// Waits until `reader` (subscribed to the key set on the edge) receives `payload` through
/// the bridge.
async fn bridged_key_set(reader: &mut TestClient, payload: &[u8], edge: &Mosquitto) {
    let (topic, got) = reader
        .next_publish(T)
        .await
        .unwrap_or_else(|| panic!("the key set did not cross the bridge:\n{}", edge.log()));
    assert_eq!(
        (topic.as_str(), got.as_slice()),
        (topics::HUB_KEYS, payload)
    );
}

#[tokio::test]
async fn the_bridge_carries_exactly_the_phone_topics() {
    let pki = TestPki::default();
    let core = core(&pki);
    let mut hub = client(&pki, &core, "hub").await;
    hub.publish_retained(topics::HUB_KEYS, "the hub's set")
        .await;
    for filter in topics::hub_subscriptions(true) {
        hub.subscribe(&filter).await;
    }
    let mut atm = client(&pki, &core, ATM).await;
    atm.subscribe(&topics::atm_down(ATM)).await;
    let edge = edge(&pki, &core);

    // A phone on the edge gets the key set once the bridge is up.
    let mut phone = client(&pki, &edge, "dev-1").await;
    phone.subscribe(topics::HUB_KEYS).await;
    bridged_key_set(&mut phone, b"the hub's set", &edge).await;
    phone.subscribe(&topics::phone_push("dev-1")).await;
    let mut other = client(&pki, &edge, "dev-2").await;
    other.subscribe(&topics::phone_push("dev-2")).await;

    // Its own up-link reaches the hub; its pushes reach it.
    phone.publish(&topics::phone_up("dev-1"), "genuine").await;
    let (topic, payload) = hub.next_publish(T).await.expect("the up-link crossed");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (topics::phone_up("dev-1").as_str(), b"genuine".as_slice())
    );
    hub.publish(&topics::phone_push("dev-1"), "push for dev-1")
        .await;
    let (topic, payload) = phone.next_publish(T).await.expect("the push crossed");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (
            topics::phone_push("dev-1").as_str(),
            b"push for dev-1".as_slice()
        )
    );

    // Everything else a phone tries goes nowhere: writing others' topics, and reading
    // them (a snooping phone subscribed to everything sees only the key set).
    let mut snoop = client(&pki, &edge, "dev-4").await;
    for filter in ["#", "qrcash/v1/atm/#", "$SYS/#"] {
        snoop.subscribe(filter).await;
    }
    snoop.subscribe(&topics::phone_push("dev-2")).await;
    bridged_key_set(&mut snoop, b"the hub's set", &edge).await;
    phone.publish(&topics::atm_up(ATM), "forged report").await;
    phone.publish(&topics::atm_down(ATM), "forged order").await;
    phone.publish(&topics::phone_up("dev-2"), "forged").await;
    phone.publish_retained(topics::HUB_KEYS, "forged set").await;
    atm.publish(&topics::atm_up(ATM), "the ATM's report").await;
    hub.publish(&topics::atm_down(ATM), "order for the ATM")
        .await;
    hub.publish(&topics::phone_push("dev-2"), "push for dev-2")
        .await;

    // Each gets exactly its own; the last message of each arrives after anything forged.
    let (_, payload) = atm.next_publish(T).await.expect("the order");
    assert_eq!(payload, b"order for the ATM");
    assert!(atm.next_publish(QUIET).await.is_none(), "a forged order");
    let (topic, payload) = hub.next_publish(T).await.expect("the ATM's report");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (topics::atm_up(ATM).as_str(), b"the ATM's report".as_slice())
    );
    assert!(hub.next_publish(QUIET).await.is_none(), "a forged up-link");
    let (_, payload) = other.next_publish(T).await.expect("dev-2's push");
    assert_eq!(payload, b"push for dev-2");
    assert!(
        phone.next_publish(QUIET).await.is_none(),
        "the phone read another's traffic"
    );
    assert!(
        snoop.next_publish(QUIET).await.is_none(),
        "a phone read traffic not meant for it"
    );
    // The key set on both sides is still the hub's.
    let mut late = client(&pki, &edge, "dev-3").await;
    late.subscribe(topics::HUB_KEYS).await;
    bridged_key_set(&mut late, b"the hub's set", &edge).await;
    let mut late_core = client(&pki, &core, "atm-9").await;
    late_core.subscribe(topics::HUB_KEYS).await;
    let (_, payload) = late_core.next_publish(T).await.unwrap();
    assert_eq!(payload, b"the hub's set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_with_the_phone_on_the_edge_survives_an_edge_restart() {
    let pki = TestPki::default();
    let mut core = core(&pki);
    let mut edge = edge(&pki, &core);
    let dir = tempfile::tempdir().unwrap();

    let qrcash_tests::hub::TestHub {
        service: hub,
        hub_key,
        clock,
        atm_key,
    } = qrcash_tests::hub::start_on(dir.path(), pki.client_config(&core.url(), "hub"), 9, ATM)
        .await;
    let qrcash_tests::atm::TestAtm {
        agent, camera, sim, ..
    } = qrcash_tests::atm::start_on(
        dir.path(),
        ATM,
        &atm_key,
        &hub_key,
        pki.client_config(&core.url(), ATM),
        100,
        Arc::new(clock.clone()),
    )
    .await;

    let settings = PhoneSettings {
        resend_after: Duration::from_secs(1),
        ..PhoneSettings::new(
            "hanako-phone",
            pki.client_config(&edge.url(), "hanako-phone"),
        )
    };
    let mut phone = PhoneClient::connect(
        settings,
        PrivateKey::generate(),
        hub_key.clone(),
        DeviceStore::in_memory(),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let here = Position::new(SHIBUYA.0, SHIBUYA.1, 10.0);
    phone
        .login("hanako", &password("hanako"), Some(here), T)
        .await
        .unwrap_or_else(|e| panic!("login through the bridge: {e}\n{}", edge.log()));
    let code = phone
        .register_withdrawal("hanako", Amount::new(12_000, Currency::JPY), T)
        .await
        .unwrap();

    // The edge broker (and its bridge) restarts: the phone reconnects and its next request
    // goes through once the bridge is back.
    edge.stop();
    edge.start_again();
    let balance = phone.balance("hanako", 0, T).await.unwrap();
    assert_eq!(balance.held, Amount::new(0, Currency::JPY));
    // The core restarts (the bridge, the hub and the ATM lose it): a request that crosses
    // the bridge before the hub has subscribed again is lost there, and the phone's resend
    // brings it through.
    core.stop();
    core.start_again();
    let balance = phone.balance("hanako", 0, T).await.unwrap();
    assert_eq!(balance.held, Amount::new(0, Currency::JPY));
    assert!(
        hub.wait_ready(T).await,
        "the hub is subscribed again after the core's restart"
    );

    let (_, receipt) = show_and_confirm(&mut phone, &camera, &code, &clock, here, T).await;
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(sim.counters().delivered, 3);
    assert_eq!(phone.rejected_pushes(), 0);
    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}
