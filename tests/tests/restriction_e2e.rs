//! The new-device restriction with the real pieces: the hub service (in-process, real
//! SQLite), two reference phone clients (the owner next to the ATM in Shibuya, a fraudster
//! with the stolen password in Osaka), the ATM agent with a synthetic camera and the LCDM
//! simulator on a pty, all over a private Mosquitto. Hub, phones and agent share one
//! hand-moved clock.

use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::{AgentEvent, Screen};
use qrcash_hub::testkit::{PIN, SHIBUYA, password};
use qrcash_io::BrokerConfig;
use qrcash_phone::{DeviceStore, PhoneClient, PhoneError, PhoneSettings, requests};
use qrcash_protocol::messages::{AlertOutcome, RejectReason, RestrictionReason};
use qrcash_protocol::{Amount, Clock, Currency, ManualClock, Position, PrivateKey, PublicKey};
use qrcash_tests::atm::wait_event;
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

/// A private Mosquitto, the hub (hanako's account, the ATM in Shibuya) and the ATM agent
/// with the LCDM simulator, sharing one hand-moved clock.
struct World {
    broker: Mosquitto,
    _dir: tempfile::TempDir,
    hub: qrcash_hub::service::HubHandle,
    hub_key: PublicKey,
    clock: ManualClock,
    agent: qrcash_agent::AgentHandle,
    events: tokio::sync::broadcast::Receiver<AgentEvent>,
    camera: qrcash_hardware::camera::SyntheticCamera,
    sim: qrcash_hardware::dispenser::sim::SimHandle,
}

async fn world(seed: u64) -> World {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let qrcash_tests::hub::TestHub {
        service: hub,
        hub_key,
        clock,
        atm_key,
    } = qrcash_tests::hub::start(dir.path(), &broker.url(), seed, ATM).await;
    let qrcash_tests::atm::TestAtm {
        agent,
        events,
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
    World {
        broker,
        _dir: dir,
        hub,
        hub_key,
        clock,
        agent,
        events,
        camera,
        sim,
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
    let World {
        broker,
        _dir,
        hub,
        hub_key,
        clock,
        agent,
        mut events,
        camera,
        sim,
    } = world(11).await;

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
    let alert = owner.await_alert(T).await.expect("alert to the owner");
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
    wait_event(T, &mut events, "confirm screen", |e| {
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
    wait_event(T, &mut events, "cancelled screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::Cancelled { .. }))
    })
    .await;

    // The owner answers the alert "not me": the account is frozen for money out, the
    // owner's own withdrawal included (the owner's messages are handled in order, so the
    // answer is in by then)...
    let answered = owner
        .answer_alert(&alert.alert_id, true, T)
        .await
        .expect("answer");
    assert_eq!(answered.outcome, AlertOutcome::RevokedAndFrozen);
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

/// Hole 1 of the account-takeover issue, end to end: the owner's phone is established in
/// Shibuya; a second phone logs in with the password claiming Shibuya's coordinates. A claim
/// is not evidence: all four money-out functions and an ATM withdrawal are refused with
/// `Restricted` and nothing moves, until the owner approves the new phone from the first;
/// then they pass, and the ATM pays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_claiming_the_owners_place_moves_nothing_until_the_owner_approves() {
    let World {
        broker,
        _dir,
        hub,
        hub_key,
        clock,
        agent,
        camera,
        sim,
        ..
    } = world(12).await;

    let shibuya = Position::new(SHIBUYA.0, SHIBUYA.1, 10.0);
    let mut owner = phone(&broker, "hanako-phone", &hub_key, &clock).await;
    owner
        .login("hanako", &password("hanako"), Some(shibuya), T)
        .await
        .expect("owner login");

    // An hour later, another phone with the password, claiming to stand in the same spot.
    clock.advance(Duration::from_secs(3_600));
    let mut second = phone(&broker, "second-phone", &hub_key, &clock).await;
    let login = second
        .login("hanako", &password("hanako"), Some(shibuya), T)
        .await
        .expect("second login");
    assert!(login.new_device);
    let info = login.restriction.expect("a claimed position frees nothing");
    assert_eq!(info.reason, RestrictionReason::NewDevice);
    let until = info.until.expect("timed");
    let alert = owner.await_alert(T).await.expect("alert to the owner");
    assert_eq!(alert.device_id, "second-phone");
    assert_eq!(alert.position, None, "the claim is not shown to the owner");

    let restricted = RejectReason::Restricted { until };
    assert_eq!(
        rejected(second.transfer("taro", jpy(30_000), None, T).await),
        restricted
    );
    assert_eq!(
        rejected(second.pay("cafe", jpy(1_000), T).await),
        restricted
    );
    assert_eq!(
        rejected(second.bank_withdraw("bank-hanako", jpy(20_000), T).await),
        restricted
    );
    assert_eq!(
        rejected(second.top_up(jpy(1_000), "fund-hanako", T).await),
        restricted
    );
    assert_eq!(
        rejected(second.register_withdrawal("hanako", jpy(10_000), T).await),
        restricted
    );
    let balance = owner.balance("hanako", 0, T).await.expect("balance");
    assert_eq!(
        (balance.available, balance.held),
        (jpy(100_000), jpy(0)),
        "nothing moved"
    );

    // The owner approves the new phone from the established one.
    let answered = owner
        .answer_alert(&alert.alert_id, false, T)
        .await
        .expect("approval");
    assert_eq!(answered.outcome, AlertOutcome::Approved);

    second
        .transfer("taro", jpy(30_000), None, T)
        .await
        .expect("transfer");
    second.pay("cafe", jpy(1_000), T).await.expect("payment");
    second
        .bank_withdraw("bank-hanako", jpy(20_000), T)
        .await
        .expect("bank payout");
    second
        .top_up(jpy(1_000), "fund-hanako", T)
        .await
        .expect("top-up");
    let code = second
        .register_withdrawal("hanako", jpy(10_000), T)
        .await
        .expect("code");
    camera.show(&code.token).expect("show the code");
    let request = second
        .await_confirm_request(Some(code.tx_id), T)
        .await
        .expect("confirm request to the second phone");
    camera.clear();
    let jti = second
        .confirm(
            &request,
            requests::evidence(Some(PIN), None, clock.now()),
            Some(shibuya),
        )
        .await
        .expect("confirm");
    let receipt = second
        .await_receipt(&code.tx_id.to_string(), Some(&jti), T)
        .await
        .expect("receipt");
    assert_eq!(receipt.settled, jpy(10_000));
    // The receipt follows the ATM's report, which follows the dispense.
    assert_eq!(sim.counters().delivered, 1, "one 10,000 note");
    // 100,000 − 30,000 − 1,000 − 20,000 + 1,000 − 10,000
    assert_eq!(receipt.balance, jpy(40_000));
    assert_eq!(owner.rejected_pushes() + second.rejected_pushes(), 0);
    owner.shutdown().await;
    second.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}
