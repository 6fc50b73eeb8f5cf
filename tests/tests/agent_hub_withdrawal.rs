//! The whole withdrawal with the real pieces: the hub service (in-process, real SQLite),
//! the reference phone client, the ATM agent with a synthetic camera and the LCDM
//! simulator on a pty, all over a private Mosquitto. The hub, phone and agent share one
//! hand-moved clock.

use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::{AgentEvent, Screen};
use qrcash_hardware::camera::SyntheticCamera;
use qrcash_hub::testkit::{SHIBUYA, password};
use qrcash_io::BrokerConfig;
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings};
use qrcash_protocol::messages::{ReceiptKind, ReceiptStatus};
use qrcash_protocol::{Amount, Currency, Position, PrivateKey};
use qrcash_tests::atm::wait_event;
use qrcash_tests::broker::Mosquitto;
use qrcash_tests::customer::show_and_confirm;

const T: Duration = Duration::from_secs(20);
const ATM: &str = "atm-shibuya-1";

/// Everything running: hub, agent, phone (logged in as `hanako` near the ATM).
struct World {
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    hub: qrcash_hub::service::HubHandle,
    agent: qrcash_agent::AgentHandle,
    events: tokio::sync::broadcast::Receiver<AgentEvent>,
    phone: PhoneClient,
    camera: SyntheticCamera,
    sim: qrcash_hardware::dispenser::sim::SimHandle,
    clock: qrcash_protocol::ManualClock,
    here: Position,
}

async fn world() -> World {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();

    // Hub: an account and this ATM (two cassettes: 10,000 and 1,000 yen).
    let qrcash_tests::hub::TestHub {
        service: hub,
        hub_key,
        clock,
        atm_key,
    } = qrcash_tests::hub::start(dir.path(), &broker.url(), 7, ATM).await;

    // Agent.
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

    // Phone.
    let mut phone = PhoneClient::connect(
        PhoneSettings::new("hanako-phone", BrokerConfig::plain(broker.url())),
        PrivateKey::generate(),
        hub_key.clone(),
        DeviceStore::in_memory(),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let here = Position::new(SHIBUYA.0, SHIBUYA.1, 10.0);
    let login = phone
        .login("hanako", &password("hanako"), Some(here), T)
        .await
        .unwrap();
    assert!(login.restriction.is_none(), "{login:?}");
    World {
        _broker: broker,
        _dir: dir,
        hub,
        agent,
        events,
        phone,
        camera,
        sim,
        clock,
        here,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_hub_and_agent_complete_a_withdrawal_and_the_notes_leave_once() {
    let World {
        hub,
        agent,
        mut events,
        mut phone,
        camera,
        sim,
        clock,
        here,
        _broker,
        _dir,
        ..
    } = world().await;
    let code = phone
        .register_withdrawal("hanako", Amount::new(12_000, Currency::JPY), T)
        .await
        .unwrap();

    // The customer shows the code to the ATM's camera and confirms on the phone.
    let (request, receipt) = show_and_confirm(&mut phone, &camera, &code, &clock, here, T).await;
    assert_eq!(request.atm.atm_id, ATM);
    assert_eq!(request.amount, Amount::new(12_000, Currency::JPY));
    assert_eq!(receipt.kind, ReceiptKind::Withdrawal);
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(receipt.settled, Amount::new(12_000, Currency::JPY));
    assert_eq!(receipt.balance, Amount::new(88_000, Currency::JPY));
    assert_eq!(
        sim.counters().delivered,
        3,
        "one 10,000 and two 1,000 notes"
    );
    assert_eq!(phone.rejected_pushes(), 0);

    // The agent's report is acknowledged: its outbox drains.
    wait_event(
        T,
        &mut events,
        "ack of the dispense report",
        |e| matches!(e, AgentEvent::Delivered { kind, .. } if kind == "DispenseReport"),
    )
    .await;
    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_withdrawal_ends_the_atm_session_without_cash() {
    let World {
        hub,
        agent,
        mut events,
        mut phone,
        camera,
        sim,
        _broker,
        _dir,
        ..
    } = world().await;
    let code = phone
        .register_withdrawal("hanako", Amount::new(12_000, Currency::JPY), T)
        .await
        .unwrap();
    camera.show(&code.token).unwrap();
    let request = phone
        .await_confirm_request(Some(code.tx_id), T)
        .await
        .unwrap();
    camera.clear();
    wait_event(T, &mut events, "confirm screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::ConfirmOnPhone { .. }))
    })
    .await;
    phone.decline(request.tx_id, false).await.unwrap();
    wait_event(T, &mut events, "cancelled screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::Cancelled { .. }))
    })
    .await;
    assert_eq!(
        agent.screen(),
        Screen::Cancelled {
            reason: "declined on the phone".into()
        }
    );
    assert_eq!(sim.counters().delivered, 0);
    let balance = phone.balance("hanako", 0, T).await.unwrap();
    assert_eq!(balance.available, Amount::new(100_000, Currency::JPY));
    assert_eq!(balance.held, Amount::new(0, Currency::JPY));
    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}

/// A hub key rotation in the middle of a withdrawal (`docs/deployment.md` §4): the code was
/// issued and signed by the old key; the hub restarts with a new key and keeps the old one as
/// a previous key. The agent and the phone, provisioned with the old key only, learn the new
/// one from the key set the old key endorsed; the hub still accepts its old code; the push,
/// the order and the receipt, signed by the new key, are accepted; the cash leaves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_key_rotation_in_the_middle_of_a_withdrawal_loses_nothing() {
    let World {
        hub,
        agent,
        mut events,
        mut phone,
        camera,
        sim,
        clock,
        here,
        _broker,
        _dir,
    } = world().await;
    let code = phone
        .register_withdrawal("hanako", Amount::new(12_000, Currency::JPY), T)
        .await
        .unwrap();
    let old = qrcash_hub::testkit::test_hub_key();
    assert_eq!(phone.hub_keys(), vec![old.public().clone()]);

    // The operator rotates the key.
    hub.shutdown().await;
    let new = PrivateKey::generate();
    let store = qrcash_hub::store::Store::open(&_dir.path().join("hub.sqlite")).unwrap();
    let rig = qrcash_hub::testkit::Rig::with_key(
        store,
        qrcash_hub::testkit::test_config(),
        8,
        new.clone(),
    );
    let rotated = rig
        .hub
        .with_clock(Arc::new(clock.clone()))
        .with_previous_keys(vec![old.clone()])
        .unwrap();
    let hub = qrcash_hub::service::HubService::start(
        rotated,
        qrcash_hub::service::ServiceOptions {
            broker: BrokerConfig::plain(_broker.url()),
            client_id: "hub".into(),
            shared_subscription: false,
            group_commit_max: 64,
            sweep_interval: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    assert!(hub.wait_ready(T).await);
    wait_event(T, &mut events, "the agent learns the new key", |e| {
        matches!(
            e,
            AgentEvent::Journal {
                kind: qrcash_agent::store::JournalKind::HubKey,
                ..
            }
        )
    })
    .await;

    // The code signed by the old key is still good at the hub; the push, the order and
    // the receipt are signed by the new key.
    let (_, receipt) = show_and_confirm(&mut phone, &camera, &code, &clock, here, T).await;
    assert!(phone.hub_keys().contains(new.public()));
    assert_eq!(&phone.sealing_key(), new.public());
    assert_eq!(phone.message_keys(), vec![new.public().clone()]);
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(sim.counters().delivered, 3);
    assert_eq!(phone.rejected_pushes(), 0);
    wait_event(
        T,
        &mut events,
        "ack of the dispense report",
        |e| matches!(e, AgentEvent::Delivered { kind, .. } if kind == "DispenseReport"),
    )
    .await;
    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;

    // The agent keeps what it learned.
    let mut store =
        qrcash_agent::store::Store::open(&_dir.path().join("agent.db"), Default::default())
            .unwrap();
    let state = store.hub_trust_state().unwrap().unwrap();
    assert_eq!(state.current, Some(new.public().to_jwk()));
    assert_eq!(state.endorsed_by, Some(old.kid().to_string()));
}
