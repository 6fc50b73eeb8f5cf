//! A clustered broker, as a bank runs it: three NATS server nodes routed into one cluster,
//! each with its MQTT listener. The hub, the ATM's agent and the phone each start on a
//! different node and name the other two as `failover_urls`. Withdrawals go through across
//! the cluster; when the node the ATM is connected to dies, the agent moves on to the next
//! node and the next withdrawal is served, with the notes counted once.

use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::AgentEvent;
use qrcash_hub::testkit::{SHIBUYA, password};
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings};
use qrcash_protocol::messages::ReceiptStatus;
use qrcash_protocol::{Amount, Currency, Position, PrivateKey};
use qrcash_tests::atm::wait_event;
use qrcash_tests::customer::show_and_confirm;
use qrcash_tests::nats::NatsCluster;

const T: Duration = Duration::from_secs(60);
const ATM: &str = "atm-shibuya-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_go_on_when_the_node_the_atm_uses_dies() {
    // The links' logs (which broker, why it moved on) in the captured output of a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,qrcash_io=debug"))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let mut cluster = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let qrcash_tests::hub::TestHub {
        service: hub,
        hub_key,
        clock,
        atm_key,
    } = qrcash_tests::hub::start_on(dir.path(), cluster.config(0), 7, ATM).await;
    let qrcash_tests::atm::TestAtm {
        agent,
        mut events,
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
