//! The locked-down broker: Mosquitto with TLS, required client certificates, CN as username
//! and the production ACL (`deploy/mosquitto/acl.conf`). Proves that a device can neither
//! publish on nor read another device's topics and that a client without a valid
//! certificate cannot connect at all. The production configuration file itself
//! (`deploy/mosquitto/mosquitto.conf`) runs here too, with only its paths, port and log moved. (That end-to-end signatures stop a client that *is*
//! allowed on a topic is proven in `hub_security.rs`.)

use std::time::Duration;

use qrcash_protocol::topics;
use qrcash_tests::broker::{Mosquitto, MosquittoConfig};
use qrcash_tests::mqtt::TestClient;
use qrcash_tests::pki::{PRODUCTION_ACL, PRODUCTION_BROKER_CONF, TestPki};
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};

fn locked_down(pki: &TestPki) -> Mosquitto {
    pki.locked_down_broker()
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

/// The hub's key set (`docs/protocol.md` §3, "The hub's key set") is retained on one topic every client may
/// read and only the hub may write: a device cannot replace it with one of its own.
#[tokio::test]
async fn every_client_reads_the_hub_key_set_and_only_the_hub_writes_it() {
    let pki = TestPki::default();
    let broker = locked_down(&pki);
    let mut hub = client(&pki, &broker, "hub").await;
    hub.publish_retained(topics::HUB_KEYS, "the hub's set")
        .await;
    let mut atm = client(&pki, &broker, "atm-1").await;
    atm.publish_retained(topics::HUB_KEYS, "forged set").await;
    let mut phone = client(&pki, &broker, "dev-1").await;
    phone.publish_retained(topics::HUB_KEYS, "forged set").await;
    for cn in ["atm-2", "dev-2"] {
        let mut reader = client(&pki, &broker, cn).await;
        reader.subscribe(topics::HUB_KEYS).await;
        let (topic, payload) = reader
            .next_publish(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{cn} did not receive the key set"));
        assert_eq!(
            (topic.as_str(), payload.as_slice()),
            (topics::HUB_KEYS, b"the hub's set".as_slice())
        );
        assert!(reader.next_publish(QUIET).await.is_none());
    }
}

/// The shipped broker configuration runs: no deprecated option, the production ACL confines
/// devices, and a packet above its `max_packet_size` ends the sender's connection without
/// reaching anyone.
#[tokio::test]
async fn the_production_configuration_runs_as_shipped() {
    let pki = TestPki::default();
    let broker = Mosquitto::start_with(MosquittoConfig {
        tls: Some(pki.broker_tls()),
        acl: Some(PRODUCTION_ACL.to_owned()),
        verbatim: Some(PRODUCTION_BROKER_CONF.to_owned()),
        ..MosquittoConfig::default()
    });
    let conf = std::fs::read_to_string(broker.dir().join("mosquitto.conf")).unwrap();
    assert!(conf.contains("require_certificate true"), "{conf}");
    assert!(conf.contains("max_packet_size 131072"), "{conf}");
    let log = broker.log();
    assert!(
        !log.contains("recommended to replace") && !log.to_lowercase().contains("deprecated"),
        "the shipped configuration uses a deprecated option:\n{log}"
    );

    let mut hub = client(&pki, &broker, "hub").await;
    hub.subscribe(&topics::atm_up("+")).await;
    let mut atm1 = client(&pki, &broker, "atm-1").await;
    atm1.publish(&topics::atm_up("atm-2"), "forged").await;
    atm1.publish(&topics::atm_up("atm-1"), vec![b'x'; 60_000])
        .await;
    let (topic, payload) = hub
        .next_publish(Duration::from_secs(5))
        .await
        .expect("the ATM's own up-link was not delivered");
    assert_eq!(
        (topic.as_str(), payload.len()),
        (topics::atm_up("atm-1").as_str(), 60_000)
    );

    // 200 KiB in one packet: the broker drops the connection instead of acknowledging.
    let cfg = pki.client_config(&broker.url(), "atm-3");
    let mut opts = qrcash_io::broker::mqtt_options(&cfg, "atm-3").unwrap();
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (big, mut events) = rumqttc::AsyncClient::new(opts, 16);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sent = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) if !sent => {
                    sent = true;
                    big.publish(
                        topics::atm_up("atm-3"),
                        QoS::AtLeastOnce,
                        false,
                        vec![b'x'; 200 * 1024],
                    )
                    .await
                    .unwrap();
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err((sent, e.to_string())),
            }
        }
    })
    .await
    .expect("neither an ack nor a disconnect within 10 s");
    match outcome {
        Ok(()) => panic!("the broker acknowledged a 200 KiB packet"),
        Err((sent, e)) => assert!(sent, "atm-3 never connected: {e}\n{}", broker.log()),
    }
    assert!(
        hub.next_publish(QUIET).await.is_none(),
        "an oversized packet was delivered"
    );
}
