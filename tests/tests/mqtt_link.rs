//! The one MQTT link the hub, the agent and the phone share (`qrcash_io::link`), against a
//! private Mosquitto: up only once subscribed, messages in order, down when the broker dies,
//! subscriptions and on-connect messages renewed after it comes back, the last will when the
//! connection dies without DISCONNECT and the on-disconnect message when it ends cleanly,
//! down on a refused subscription until the broker accepts it when asked again, the next
//! broker of the list when one is dead, and no reconnection once finishing.

use std::time::Duration;

use qrcash_io::link::{self, LinkEvent, LinkOptions, Publication};
use qrcash_io::{Backoff, BrokerConfig};
use qrcash_tests::broker::Mosquitto;
use qrcash_tests::mqtt::TestClient;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

async fn next(events: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(T, events.recv())
        .await
        .expect("a link event in time")
        .expect("the link is running")
}

async fn next_message(events: &mut mpsc::Receiver<LinkEvent>) -> (String, Vec<u8>) {
    loop {
        if let LinkEvent::Message { topic, payload } = next(events).await {
            return (topic, payload);
        }
    }
}

fn options(broker: &Mosquitto, id: &str) -> LinkOptions {
    let mut o =
        LinkOptions::new(BrokerConfig::plain(broker.url()), id).subscribe(["t/down".to_owned()]);
    o.on_connect = vec![Publication {
        topic: format!("t/presence/{id}"),
        payload: b"online".to_vec(),
        retain: true,
    }];
    o.last_will = Some(Publication {
        topic: format!("t/presence/{id}"),
        payload: b"offline".to_vec(),
        retain: true,
    });
    o.on_disconnect = vec![Publication {
        topic: format!("t/presence/{id}"),
        payload: b"gone".to_vec(),
        retain: true,
    }];
    // Quick reconnection so the restart below does not wait for the 30-second cap.
    o.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    o
}

#[tokio::test]
async fn up_only_when_subscribed_renewed_after_a_broker_restart_and_down_in_between() {
    let mut broker = Mosquitto::start();
    let cfg = BrokerConfig::plain(broker.url());
    let (handle, mut events) = link::spawn(options(&broker, "dev-1")).unwrap();
    assert_eq!(next(&mut events).await, LinkEvent::Up);
    assert!(handle.is_up());

    // Subscribed by the time it says Up: a message sent now arrives, in order.
    let mut peer = TestClient::connect(&cfg, "peer").await.unwrap();
    peer.subscribe("t/#").await;
    for i in 0..5u8 {
        peer.publish("t/down", vec![i]).await;
    }
    for i in 0..5u8 {
        assert_eq!(next_message(&mut events).await, ("t/down".into(), vec![i]));
    }
    // Its publications reach the peer.
    handle.publish("t/up", b"hello".to_vec()).await.unwrap();
    let seen = loop {
        let (topic, payload) = peer.next_publish(T).await.expect("the link's publish");
        if topic == "t/up" {
            break payload;
        }
    };
    assert_eq!(seen, b"hello");

    // The broker dies: one Down; it comes back: Up again, subscribed again (clean session).
    broker.stop();
    assert_eq!(next(&mut events).await, LinkEvent::Down);
    assert!(!handle.is_up());
    assert_eq!(
        handle.try_publish("t/up", b"queued".to_vec()),
        Ok(()),
        "publishing while down queues in memory"
    );
    broker.start_again();
    assert_eq!(next(&mut events).await, LinkEvent::Up);
    let mut peer = TestClient::connect(&cfg, "peer-2").await.unwrap();
    peer.subscribe("t/presence/#").await;
    // The on-connect message was published again on the new connection (retained).
    let (topic, payload) = peer.next_publish(T).await.expect("retained presence");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("t/presence/dev-1", &b"online"[..])
    );
    peer.publish("t/down", b"after".to_vec()).await;
    assert_eq!(
        next_message(&mut events).await,
        ("t/down".into(), b"after".to_vec())
    );

    // A clean disconnect: the on-disconnect message (the broker drops the last will), the
    // tasks end, publishing says closed.
    handle.disconnect(T).await;
    assert!(!handle.is_up());
    assert_eq!(
        handle.try_publish("t/up", b"late".to_vec()),
        Err(qrcash_io::PublishError::Closed)
    );
    let (topic, payload) = peer
        .next_publish(T)
        .await
        .expect("the on-disconnect message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("t/presence/dev-1", &b"gone"[..])
    );
    assert!(
        peer.next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "no last will after a clean disconnect"
    );
}

#[tokio::test]
async fn the_last_will_speaks_for_a_link_that_dies_without_disconnect() {
    let broker = Mosquitto::start();
    let cfg = BrokerConfig::plain(broker.url());
    let mut watcher = TestClient::connect(&cfg, "watcher").await.unwrap();
    watcher.subscribe("t/presence/#").await;
    {
        let mut o = options(&broker, "dev-2");
        o.broker.keep_alive_s = 5;
        let (handle, mut events) = link::spawn(o).unwrap();
        assert_eq!(next(&mut events).await, LinkEvent::Up);
        let (_, payload) = watcher.next_publish(T).await.expect("online");
        assert_eq!(payload, b"online");
        // Dropping every handle aborts the tasks: the socket closes without DISCONNECT.
        drop(handle);
    }
    let (topic, payload) = watcher.next_publish(T).await.expect("the last will");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("t/presence/dev-2", &b"offline"[..])
    );
}

#[tokio::test]
async fn a_link_without_subscriptions_is_up_once_connected() {
    let broker = Mosquitto::start();
    let (handle, mut events) = link::spawn(LinkOptions::new(
        BrokerConfig::plain(broker.url()),
        "pub-only",
    ))
    .unwrap();
    assert_eq!(next(&mut events).await, LinkEvent::Up);
    assert!(handle.wait_up(T).await);
}

/// A minimal MQTT 3.1.1 broker for what Mosquitto 2.0 will not do (it grants a subscription
/// its ACL denies and then filters the messages): it accepts one connection, answers each
/// SUBSCRIBE after `delay` with the next return code of `codes` (the last one again once they
/// run out), and answers pings.
async fn scripted_broker(delay: Duration, codes: &[u8]) -> String {
    let mut codes = codes.to_vec();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        loop {
            let mut head = [0u8; 1];
            if sock.read_exact(&mut head).await.is_err() {
                return;
            }
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let mut b = [0u8; 1];
                sock.read_exact(&mut b).await.unwrap();
                len |= usize::from(b[0] & 0x7f) << shift;
                shift += 7;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            sock.read_exact(&mut body).await.unwrap();
            let answer: Vec<u8> = match head[0] >> 4 {
                1 => vec![0x20, 2, 0, 0],
                8 => {
                    tokio::time::sleep(delay).await;
                    let code = if codes.len() > 1 {
                        codes.remove(0)
                    } else {
                        codes[0]
                    };
                    vec![0x90, 3, body[0], body[1], code]
                }
                12 => vec![0xd0, 0],
                _ => continue,
            };
            sock.write_all(&answer).await.unwrap();
        }
    });
    url
}

#[tokio::test]
async fn up_comes_with_the_subscription_acknowledgement_and_never_with_a_refusal() {
    let plain = |url: String, id: &str| {
        LinkOptions::new(BrokerConfig::plain(url), id).subscribe(["t/down".to_owned()])
    };
    // Acknowledged late: nothing is up before the SUBACK.
    let url = scripted_broker(Duration::from_millis(600), &[0x01]).await;
    let (handle, mut events) = link::spawn(plain(url, "dev-3")).unwrap();
    assert!(
        !handle.wait_up(Duration::from_millis(300)).await,
        "up before the broker acknowledged the subscription"
    );
    assert_eq!(next(&mut events).await, LinkEvent::Up);
    // Refused (0x80, as an ACL would): the link stays down, however often it asks again.
    let url = scripted_broker(Duration::ZERO, &[0x80]).await;
    let (handle, _events) = link::spawn(plain(url, "dev-4")).unwrap();
    assert!(
        !handle.wait_up(Duration::from_secs(4)).await,
        "up although the broker refused the subscription"
    );
    // Refused once, as a cluster node that cannot serve the topic yet: asked again 1 to 2 s
    // later, accepted, up, without a reconnection.
    let url = scripted_broker(Duration::ZERO, &[0x80, 0x01]).await;
    let (handle, mut events) = link::spawn(plain(url, "dev-6")).unwrap();
    assert!(
        !handle.wait_up(Duration::from_millis(800)).await,
        "up before the broker accepted the subscription"
    );
    assert_eq!(next(&mut events).await, LinkEvent::Up);
}

/// A clustered broker: the first address is dead, so the link moves on to the next one of
/// `failover_urls` and is up there.
#[tokio::test]
async fn a_dead_broker_is_passed_over_for_the_next_of_the_list() {
    let broker = Mosquitto::start();
    // Port 1 (tcpmux): nothing listens there, and no test's broker can be given it.
    let dead = "mqtt://127.0.0.1:1".to_owned();
    let config = BrokerConfig {
        url: dead,
        failover_urls: vec![broker.url()],
        ..BrokerConfig::default()
    };
    let (handle, mut events) =
        link::spawn(LinkOptions::new(config, "dev-7").subscribe(["t/dev-7".to_owned()])).unwrap();
    assert_eq!(next(&mut events).await, LinkEvent::Up);
    let mut sender = TestClient::connect(&BrokerConfig::plain(broker.url()), "sender-7")
        .await
        .unwrap();
    sender.publish("t/dev-7", b"via the second".to_vec()).await;
    assert_eq!(
        next(&mut events).await,
        LinkEvent::Message {
            topic: "t/dev-7".into(),
            payload: b"via the second".to_vec()
        }
    );
    assert!(handle.is_up());
    // An address that does not parse is refused at start, wherever it is in the list.
    let bad = BrokerConfig {
        failover_urls: vec!["http://nope".into()],
        ..BrokerConfig::plain(broker.url())
    };
    assert!(link::spawn(LinkOptions::new(bad, "dev-8")).is_err());
}

#[tokio::test]
async fn a_finishing_link_gives_up_when_the_broker_is_gone_instead_of_reconnecting() {
    let mut broker = Mosquitto::start();
    let mut o = options(&broker, "dev-5");
    o.queue = 1;
    let (handle, mut events) = link::spawn(o).unwrap();
    assert_eq!(next(&mut events).await, LinkEvent::Up);
    handle.finish();
    broker.stop();
    // Publishing fails as soon as the link noticed, instead of waiting for a broker that
    // may never come back (a hub shutting down with answers queued).
    let gave_up = tokio::time::timeout(T, async {
        loop {
            if handle.publish("t/up", b"x".to_vec()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gave_up.is_ok(), "publishing still waits for a reconnection");
}

#[tokio::test]
async fn an_invalid_topic_filter_is_refused_at_the_start() {
    let broker = Mosquitto::start();
    let mut o = options(&broker, "dev-6");
    o.subscriptions = vec!["t/#/x".into()];
    assert!(matches!(
        link::spawn(o),
        Err(qrcash_io::LinkError::BadFilter(f)) if f == "t/#/x"
    ));
}

/// A certificate renewed on disk is used without a restart: the link notices the changed
/// files, reconnects with them, and (shown here with a certificate from a CA the broker does
/// not trust, then a good one again) every reconnection reads the files as they are now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_tls_files_are_used_without_a_restart() {
    use qrcash_tests::pki::TestPki;
    let pki = TestPki::default();
    let broker = pki.locked_down_broker();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("atm.pem"), dir.path().join("atm.key"));
    let install = |from: &TestPki| {
        let (c, k) = from.client_files("atm-1");
        // Written beside and renamed, as a technician's copy or a package would.
        std::fs::copy(&c, dir.path().join("new.pem")).unwrap();
        std::fs::copy(&k, dir.path().join("new.key")).unwrap();
        std::fs::rename(dir.path().join("new.pem"), &cert).unwrap();
        std::fs::rename(dir.path().join("new.key"), &key).unwrap();
    };
    install(&pki);
    let mut options = LinkOptions::new(
        BrokerConfig {
            url: broker.url(),
            ca_file: Some(pki.ca_file()),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            // The files are looked at when the link has an event: at the latest the ping
            // of every keep-alive.
            keep_alive_s: 5,
            ..BrokerConfig::default()
        },
        "atm-1",
    )
    .subscribe(["qrcash/v1/atm/atm-1/down".to_owned()]);
    options.tls_check = Duration::from_millis(200);
    options.backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
    let (_handle, mut events) = link::spawn(options).unwrap();
    assert_eq!(next(&mut events).await, LinkEvent::Up);

    // A certificate the broker refuses: the link drops its connection to use it, and stays
    // down (each reconnection reads the files again and is refused).
    install(&TestPki::new("stranger CA"));
    assert_eq!(next(&mut events).await, LinkEvent::Down);
    let stays_down = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
    assert!(
        stays_down.is_err(),
        "no Up with a refused certificate: {stays_down:?}"
    );

    // A good certificate again: up without a restart.
    install(&pki);
    assert_eq!(next(&mut events).await, LinkEvent::Up);
}
