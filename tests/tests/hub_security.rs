//! End-to-end signatures over the locked-down broker (TLS, client certificates, production
//! ACL): a client that *is* allowed on a topic still cannot get anything past the hub
//! without the enrolled key, and unauthenticated input is never answered.

mod hub_common;

use std::time::Duration;

use hub_common::{Net, Peer};
use qrcash_hub::testkit::TestDevice;
use qrcash_protocol::messages::{AtmDown, AtmUp, CodePresented, Heartbeat};
use qrcash_protocol::{RejectReason, TxId};
use qrcash_tests::pki::TestPki;

const QUIET: Duration = Duration::from_millis(300);

fn beat() -> AtmUp {
    AtmUp::Heartbeat(Heartbeat {
        state: qrcash_protocol::messages::AtmState::Idle,
        cassettes: vec![],
        outbox: 0,
        software: "test".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_enrolled_keys_get_answers_even_from_allowed_clients() {
    let pki = TestPki::default();
    let broker = pki.locked_down_broker();
    let url = broker.url();
    let (net, devices) = Net::start(pki.client_config(&url, "hub"), "hub", |rig| {
        vec![rig.atm("atm-1"), rig.atm("atm-2")]
    })
    .await;
    let atm1_key = devices[0].clone();

    // A stolen certificate of atm-1 with a key of its own: signatures do not verify.
    let mut thief = Peer::connect(
        &pki.client_config(&url, "atm-1"),
        TestDevice::new("atm-1"),
        true,
    )
    .await;
    thief.atm(&net, beat()).await;
    thief.send_raw(b"not even a JWS".to_vec()).await;
    thief.send_raw(vec![b'x'; 20_000]).await;
    assert!(
        thief.silent(QUIET).await,
        "unauthenticated input was answered"
    );

    // The real atm-1 (same certificate, enrolled key) is answered; what arrives first is
    // the Ack of its heartbeat, so nothing was sent for the thief's messages.
    drop(thief);
    let mut atm1 = Peer::connect(&pki.client_config(&url, "atm-1"), atm1_key, true).await;
    let sent = atm1.atm(&net, beat()).await;
    match atm1.down(&net).await.msg {
        AtmDown::Ack(a) => assert_eq!(a.ids, vec![sent.jti.clone()]),
        other => panic!("{other:?}"),
    }

    // The same message again (an outbox resend): acknowledged again.
    atm1.send_raw(atm1.dev.seal(&sent)).await;
    assert!(matches!(atm1.down(&net).await.msg, AtmDown::Ack(_)));
    // A different message reusing the sequence number: refused as a replay.
    let mut replay = sent.clone();
    replay.jti = "replayed-jti".into();
    atm1.send_raw(atm1.dev.seal(&replay)).await;
    match atm1.down(&net).await.msg {
        AtmDown::Rejected(r) => assert_eq!(r.reason, RejectReason::Replayed),
        other => panic!("{other:?}"),
    }
    // A forged code: refused with code_invalid.
    let forged = qrcash_protocol::CodeToken::issue(
        &qrcash_protocol::PrivateKey::generate(),
        TxId([3; 16]),
        net.now() + 60,
    );
    atm1.atm(&net, AtmUp::CodePresented(CodePresented { token: forged }))
        .await;
    match atm1.down(&net).await.msg {
        AtmDown::Rejected(r) => assert_eq!(r.reason, RejectReason::CodeInvalid),
        other => panic!("{other:?}"),
    }

    // atm-2 signs correctly but claims to be atm-1: the topic's id wins, refused.
    let mut atm2 = Peer::connect(&pki.client_config(&url, "atm-2"), devices[1].clone(), true).await;
    let mut claims = atm2.dev.claims(&net.hub_id, net.now(), beat());
    claims.iss = "atm-1".into();
    let bytes = qrcash_protocol::Signer::new("atm-1", atm2.dev.key.clone()).seal(&claims);
    atm2.send_raw(bytes.into_bytes()).await;
    match atm2.down(&net).await.msg {
        AtmDown::Rejected(r) => assert_eq!(r.reason, RejectReason::WrongAddress),
        other => panic!("{other:?}"),
    }
    assert!(atm1.silent(QUIET).await);

    let hub = net.stop().await;
    let rejected = qrcash_hub::store::audit::count(hub.store().db(), "rejected").unwrap();
    assert_eq!(rejected, 3 + 3, "every refusal is in the audit log");
}
