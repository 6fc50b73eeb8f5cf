//! The new-device restriction with the real pieces: the hub service (in-process, real
//! SQLite), two reference phone clients (the owner next to the ATM in Shibuya, a fraudster
//! with the stolen password in Osaka), the ATM agent with a synthetic camera and the LCDM
//! simulator on a pty, all over a private Mosquitto. Hub, phones and agent share one
//! hand-moved clock.

use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::{AgentEvent, Screen};
use qrcash_hub::testkit::{PIN, SHIBUYA, password};
use qrcash_phone::{DeviceStore, PhoneClient, PhoneError, PhoneSettings, requests};
use qrcash_protocol::link::BrokerConfig;
use qrcash_protocol::messages::{PhonePush, RejectReason, RestrictionReason};
use qrcash_protocol::{Amount, Clock, Currency, ManualClock, Position, PrivateKey, PublicKey};
use qrcash_tests::broker::Mosquitto;

const T: Duration = Duration::from_secs(20);
const ATM: &str = "atm-shibuya-1";

fn jpy(v: u64) -> Amount {
    Amount::new(v, Currency::JPY)
}

async fn phone(
    broker: &Mosquitto,
    id: &str,
    hub_key: &PublicKey,
    clock: &ManualClock,
) -> PhoneClient {
    PhoneClient::connect(
        PhoneSettings::new(id, BrokerConfig::plain(broker.url())),
        PrivateKey::generate(),
        hub_key.clone(),
        DeviceStore::in_memory(),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("phone {id}: {e}"))
}

async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<AgentEvent>,
    what: &str,
    mut pred: impl FnMut(&AgentEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if pred(&e) => return,
            Ok(_) => {}
            Err(_) => panic!("no {what} within {T:?}"),
        }
    }
}

fn rejected<V: std::fmt::Debug>(r: Result<V, PhoneError>) -> RejectReason {
    match r {
        Err(PhoneError::Rejected { reason, .. }) => reason,
        other => panic!("expected a refusal from the hub, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraudster_far_away_is_restricted_the_owner_says_not_me_and_no_note_leaves() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");

    // Hub: hanako's account and the ATM in Shibuya.
    let qrcash_tests::hub::TestHub {
        service: hub,
        hub_key,
        clock,
        atm_key,
    } = qrcash_tests::hub::start(dir.path(), &broker.url(), 11, ATM).await;

    // Agent with the LCDM simulator.
    let qrcash_tests::atm::TestAtm {
        agent,
        mut events,
        camera,
        sim,
    } = qrcash_tests::atm::start(
        dir.path(),
        ATM,
        &atm_key,
        &hub_key,
        &broker.url(),
        100,
        Arc::new(clock.clone()),
    )
    .await;

    // The owner logs in next to the ATM: the account's first device, free.
    let here = Position::new(SHIBUYA.0, SHIBUYA.1, 10.0);
    let mut owner = phone(&broker, "hanako-phone", &hub_key, &clock).await;
    let login = owner
        .login("hanako", &password("hanako"), Some(here), T)
        .await
        .expect("owner login");
    assert!(
        !login.new_device && login.restriction.is_none(),
        "{login:?}"
    );

    // A day later the password is used from Osaka on another phone: restricted, and the
    // owner's phone is told.
    clock.advance(Duration::from_secs(86_400));
    let osaka = Position::new(34.7025, 135.4959, 20.0);
    let mut thief = phone(&broker, "thief-phone", &hub_key, &clock).await;
    let login = thief
        .login("hanako", &password("hanako"), Some(osaka), T)
        .await
        .expect("thief login");
    assert!(login.new_device);
    let info = login
        .restriction
        .expect("a new device in Osaka is restricted");
    assert_eq!(info.reason, RestrictionReason::NewDevice);
    let until = info.until.expect("timed");
    assert!(until > clock.now());
    let alert = match owner
        .next_push("new-device alert", T, |c| {
            matches!(c.msg, PhonePush::NewDeviceAlert(_))
        })
        .await
        .expect("alert to the owner")
        .msg
    {
        PhonePush::NewDeviceAlert(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(alert.device_id, "thief-phone");
    assert_eq!(alert.restricted_until, Some(until));

    // The thief cannot stage a withdrawal: a typed refusal carrying the end of the period.
    let refused = thief.register_withdrawal("hanako", jpy(50_000), T).await;
    assert_eq!(rejected(refused), RejectReason::Restricted { until });

    // Nor confirm the owner's: the owner shows a code at the ATM, the thief (having seen the
    // request) sends a confirmation with the exact fields, the PIN and a position at the ATM.
    let code = owner
        .register_withdrawal("hanako", jpy(12_000), T)
        .await
        .expect("owner's code");
    camera.show(&code.token).expect("show the code");
    let request = owner
        .await_confirm_request(Some(code.tx_id), T)
        .await
        .expect("confirm request to the owner");
    camera.clear();
    wait_event(&mut events, "confirm screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::ConfirmOnPhone { .. }))
    })
    .await;
    let jti = thief
        .confirm(
            &request,
            requests::evidence(Some(PIN), None, clock.now()),
            Some(here),
        )
        .await
        .expect("send");
    assert_eq!(
        rejected(thief.reply_to(&jti, T).await),
        RejectReason::Restricted { until }
    );
    // The owner did not mean to withdraw after all and declines; the ATM ends the session.
    owner.decline(request.tx_id, false).await.expect("decline");
    wait_event(&mut events, "cancelled screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::Cancelled { .. }))
    })
    .await;

    // The owner answers the alert "not me": the account is frozen for money out, the
    // owner's own withdrawal included (the owner's messages are handled in order, so the
    // answer is in by then)...
    owner
        .answer_alert(&alert.alert_id, true)
        .await
        .expect("answer");
    let refused = owner.register_withdrawal("hanako", jpy(10_000), T).await;
    assert_eq!(rejected(refused), RejectReason::AccountFrozen);
    // ...and the thief's phone is revoked.
    let refused = thief.balance("hanako", 0, T).await;
    assert_eq!(rejected(refused), RejectReason::DeviceRevoked);
    let balance = owner
        .balance("hanako", 0, T)
        .await
        .expect("balance is free");
    assert_eq!((balance.available, balance.held), (jpy(100_000), jpy(0)));

    assert_eq!(sim.counters().delivered, 0, "no note left the dispenser");
    assert_eq!(owner.rejected_pushes() + thief.rejected_pushes(), 0);
    owner.shutdown().await;
    thief.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}
