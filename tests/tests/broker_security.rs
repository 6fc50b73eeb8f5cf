//! The locked-down broker: Mosquitto with TLS, required client certificates, CN as username
//! and the production ACL (`deploy/mosquitto/acl.conf`). Proves that a device can neither
//! publish on nor read another device's topics and that a client without a valid
//! certificate cannot connect at all. (That end-to-end signatures stop a client that *is*
//! allowed on a topic is proven in `hub_security.rs`.)

use std::time::Duration;

use qrcash_protocol::topics;
use qrcash_tests::broker::{Mosquitto, MosquittoConfig};
use qrcash_tests::mqtt::TestClient;
use qrcash_tests::pki::{PRODUCTION_ACL, TestPki};
use rumqttc::SubscribeReasonCode;

fn locked_down(pki: &TestPki) -> Mosquitto {
    Mosquitto::start_with(MosquittoConfig {
        tls: Some(pki.broker_tls()),
        acl: Some(PRODUCTION_ACL.to_owned()),
        extra: Vec::new(),
    })
}

async fn client(pki: &TestPki, broker: &Mosquitto, cn: &str) -> TestClient {
    TestClient::connect(&pki.client_config(&broker.url(), cn), cn)
        .await
        .unwrap_or_else(|e| panic!("{cn} could not connect: {e}\n{}", broker.log()))
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_client_without_a_certificate_cannot_connect() {
    let pki = TestPki::default();
    let broker = locked_down(&pki);
    let err = TestClient::connect(&pki.anonymous_config(&broker.url()), "intruder")
        .await
        .err()
        .expect("a client without a certificate connected");
    assert!(!err.is_empty());
    // A certificate from another CA is refused too.
    let rogue = TestPki::new("rogue CA");
    let mut cfg = rogue.client_config(&broker.url(), "atm-1");
    cfg.ca_file = Some(pki.ca_file());
    assert!(
        TestClient::connect(&cfg, "atm-1").await.is_err(),
        "a certificate from a foreign CA was accepted"
    );
    // While a properly enrolled device gets in.
    client(&pki, &broker, "atm-1").await;
}

#[tokio::test]
async fn a_device_cannot_publish_on_another_devices_topics() {
    let pki = TestPki::default();
    let broker = locked_down(&pki);
    let mut hub = client(&pki, &broker, "hub").await;
    for filter in topics::hub_subscriptions(true) {
        assert!(matches!(
            hub.subscribe(&filter).await[..],
            [SubscribeReasonCode::Success(_)]
        ));
    }
    let mut atm1 = client(&pki, &broker, "atm-1").await;
    // Impersonation attempts: another ATM's up-link, a phone's up-link, a down-link.
    atm1.publish(&topics::atm_up("atm-2"), "forged").await;
    atm1.publish(&topics::phone_up("dev-1"), "forged").await;
    atm1.publish(&topics::atm_down("atm-1"), "forged").await;
    // Its own up-link is delivered; anything forged would have arrived before it.
    atm1.publish(&topics::atm_up("atm-1"), "genuine").await;
    let (topic, payload) = hub
        .next_publish(Duration::from_secs(5))
        .await
        .expect("the genuine message did not arrive");
    assert_eq!(topic, topics::atm_up("atm-1"));
    assert_eq!(payload, b"genuine");
    assert!(hub.next_publish(QUIET).await.is_none());

    // A phone may write only its own up-link, not pushes (which only the hub writes).
    let mut phone = client(&pki, &broker, "dev-1").await;
    let mut victim = client(&pki, &broker, "dev-2").await;
    victim.subscribe(&topics::phone_push("dev-2")).await;
    phone
        .publish(&topics::phone_push("dev-2"), "fake push")
        .await;
    phone.publish(&topics::phone_up("dev-2"), "forged").await;
    phone.publish(&topics::phone_up("dev-1"), "genuine").await;
    let (topic, _) = hub.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!(topic, topics::phone_up("dev-1"));
    assert!(
        victim.next_publish(QUIET).await.is_none(),
        "fake push delivered"
    );
}

#[tokio::test]
async fn a_device_cannot_read_another_devices_topics() {
    let pki = TestPki::default();
    let broker = locked_down(&pki);
    let mut hub = client(&pki, &broker, "hub").await;
    let mut atm1 = client(&pki, &broker, "atm-1").await;
    let mut atm2 = client(&pki, &broker, "atm-2").await;
    atm1.subscribe(&topics::atm_down("atm-1")).await;
    // atm-2 tries to eavesdrop: another ATM's down-link, the hub's inbox, everything.
    for filter in [
        topics::atm_down("atm-1"),
        "qrcash/v1/atm/+/up".to_owned(),
        "qrcash/#".to_owned(),
        "#".to_owned(),
    ] {
        atm2.subscribe(&filter).await;
    }
    atm2.subscribe(&topics::atm_down("atm-2")).await;

    hub.publish(&topics::atm_down("atm-1"), "order for atm-1")
        .await;
    let (_, payload) = atm1.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!(payload, b"order for atm-1");
    atm1.publish(&topics::atm_up("atm-1"), "report of atm-1")
        .await;
    // A message for atm-2 itself, sent last: everything leaked would come before it.
    hub.publish(&topics::atm_down("atm-2"), "for atm-2").await;
    let (topic, payload) = atm2.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (topics::atm_down("atm-2").as_str(), b"for atm-2".as_slice()),
        "atm-2 received another device's message"
    );
    assert!(atm2.next_publish(QUIET).await.is_none());
}
