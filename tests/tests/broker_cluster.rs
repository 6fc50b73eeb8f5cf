//! A clustered broker, as a bank runs it: three NATS server nodes routed into one cluster,
//! each with its MQTT listener. The hub, the ATM's agent and the phone each start on a
//! different node and name the other two as `failover_urls`. Withdrawals go through across
//! the cluster; when the node the ATM is connected to dies, the agent moves on to the next
//! node and the next withdrawal is served, with the notes counted once; when the hub's node
//! dies as the customer confirms, the phone's outbox sends the confirmation again until the
//! hub, on another node, serves it once.

use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::AgentEvent;
use qrcash_hub::testkit::{SHIBUYA, password};
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings};
use qrcash_protocol::messages::ReceiptStatus;
use qrcash_protocol::{Amount, Clock, Currency, Position, PrivateKey};
use qrcash_tests::atm::wait_event;
use qrcash_tests::customer::show_and_confirm;
use qrcash_tests::nats::NatsCluster;

const T: Duration = Duration::from_secs(60);
const ATM: &str = "atm-shibuya-1";

/// Hub on node 0, the ATM's agent on node 1, the phone (logged in near the ATM) on node 2;
/// each names the other two nodes as `failover_urls`.
struct World {
    cluster: NatsCluster,
    _dir: tempfile::TempDir,
    hub: qrcash_hub::service::HubHandle,
    agent: qrcash_agent::AgentHandle,
    events: tokio::sync::broadcast::Receiver<AgentEvent>,
    phone: PhoneClient,
    camera: qrcash_hardware::camera::SyntheticCamera,
    sim: qrcash_hardware::dispenser::sim::SimHandle,
    clock: qrcash_protocol::ManualClock,
    here: Position,
}

async fn world() -> World {
    // The links' logs (which broker, why it moved on) in the captured output of a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,qrcash_io=debug"))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let cluster = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let qrcash_tests::hub::TestHub {
        service: hub,
        hub_key,
        clock,
        atm_key,
    } = qrcash_tests::hub::start_on(dir.path(), cluster.config(0), 7, ATM).await;
    let qrcash_tests::atm::TestAtm {
        agent,
        events,
        camera,
        sim,
    } = qrcash_tests::atm::start_on(
        dir.path(),
        ATM,
        &atm_key,
        &hub_key,
        cluster.config(1),
        100,
        Arc::new(clock.clone()),
    )
    .await;
    let mut phone = PhoneClient::connect(
        PhoneSettings::new("hanako-phone", cluster.config(2)),
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
        .unwrap();
    World {
        cluster,
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
async fn withdrawals_go_on_when_the_node_the_atm_uses_dies() {
    let World {
        mut cluster,
        _dir,
        hub,
        agent,
        mut events,
        mut phone,
        camera,
        sim,
        clock,
        here,
    } = world().await;

    // Across the cluster: phone on node 2, hub on node 0, ATM on node 1.
    let code = phone
        .register_withdrawal("hanako", Amount::new(12_000, Currency::JPY), T)
        .await
        .unwrap();
    let (_, receipt) = show_and_confirm(&mut phone, &camera, &code, &clock, here, T).await;
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(
        sim.counters().delivered,
        3,
        "one 10,000 and two 1,000 notes"
    );

    // The ATM's node dies: the agent's link goes down and comes back up on another node.
    cluster.kill(1);
    wait_event(T, &mut events, "the link going down", |e| {
        matches!(e, AgentEvent::Link { up: false, .. })
    })
    .await;
    // NATS takes a few seconds to move the dead node's sessions and streams to the others;
    // meanwhile it drops new connections and may refuse a subscription once.
    wait_event(T, &mut events, "the link up on another node", |e| {
        matches!(e, AgentEvent::Link { up: true, .. })
    })
    .await;

    let code = phone
        .register_withdrawal("hanako", Amount::new(5_000, Currency::JPY), T)
        .await
        .unwrap();
    let (_, receipt) = show_and_confirm(&mut phone, &camera, &code, &clock, here, T).await;
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(
        receipt.balance,
        Amount::new(83_000, Currency::JPY),
        "each withdrawal settled once"
    );
    assert_eq!(
        sim.counters().delivered,
        8,
        "and five more 1,000 notes, dispensed once"
    );
    wait_event(
        T,
        &mut events,
        "the second report acknowledged",
        |e| matches!(e, AgentEvent::Delivered { kind, .. } if kind == "DispenseReport"),
    )
    .await;
    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}

/// The hub's node dies while the customer confirms: usually the confirmation reaches no hub
/// (the hub is still moving to another node, and NATS delivers nothing to a subscription
/// that is gone); the phone keeps it in its outbox and sends it again every 5 s, and once
/// the hub is subscribed on another node a resend gets through. Either way the withdrawal is
/// served once. (NATS sometimes takes the hub back within milliseconds, so this test cannot
/// insist that a resend was needed; `phone_client.rs` proves the resend itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_lost_while_the_hub_changes_node_is_sent_again_and_served_once() {
    let World {
        mut cluster,
        _dir,
        hub,
        agent,
        mut events,
        mut phone,
        camera,
        sim,
        clock,
        here,
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
    cluster.kill(0);
    let jti = phone
        .confirm(
            &request,
            qrcash_phone::requests::evidence(Some(qrcash_hub::testkit::PIN), None, clock.now()),
            Some(here),
        )
        .await
        .unwrap();
    let receipt = phone
        .await_receipt(&code.tx_id.to_string(), Some(&jti), T)
        .await
        .unwrap();
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(receipt.balance, Amount::new(88_000, Currency::JPY));
    assert_eq!(sim.counters().delivered, 3, "paid out once");
    wait_event(
        T,
        &mut events,
        "the report acknowledged",
        |e| matches!(e, AgentEvent::Delivered { kind, .. } if kind == "DispenseReport"),
    )
    .await;
    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
}
