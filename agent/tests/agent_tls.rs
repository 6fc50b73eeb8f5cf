//! The agent over TLS with a client certificate, through a broker running the production
//! ACL: it connects as its certificate's CN, publishes its retained presence, and a full
//! withdrawal works; when it dies, the broker publishes its last will.

mod support;

use std::time::Duration;

use qrcash_agent::{Agent, AgentEvent};
use qrcash_hardware::camera::{SyntheticCamera, SyntheticScene};
use qrcash_protocol::messages::{AtmDown, AtmUp, AwaitConfirmation, DispenseOutcome};
use qrcash_protocol::{Amount, Clock, Currency, SystemClock, TxId, topics};
use qrcash_testsupport::pki::TestPki;
use support::{ATM, Rig, ScriptedHub, order, wait_event};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_over_tls_with_client_certificates_and_the_production_acl() {
    let pki = TestPki::default();
    let broker = pki.locked_down_broker();
    let url = broker.url();
    let rig = Rig::with_broker(
        broker,
        pki.client_config(&url, ATM),
        pki.client_config(&url, "hub"),
    );
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let cam = SyntheticCamera::with_scene(
        640,
        480,
        SyntheticScene {
            noise_sigma: 0.0,
            ..SyntheticScene::default()
        },
    );
    let agent = Agent::start(rig.config(), Box::new(cam.clone()), rig.dispenser())
        .await
        .unwrap();
    let mut events = agent.subscribe();
    wait_event(&mut events, T, "link up", |e| {
        matches!(e, AgentEvent::Link { up: true })
    })
    .await;

    let now = SystemClock.now();
    let tx = TxId::random();
    cam.show(&rig.code(tx, now)).unwrap();
    let presented = hub.next_up(T).await.expect("CodePresented over TLS");
    assert!(matches!(presented.msg, AtmUp::CodePresented(_)));
    cam.clear();
    hub.ack(&presented.jti).await;
    hub.send(
        AtmDown::AwaitConfirmation(AwaitConfirmation {
            tx_id: tx,
            amount: Amount::new(12_000, Currency::JPY),
            confirm_by: now + 60,
        }),
        Some(&presented.jti),
    )
    .await;
    hub.send(AtmDown::DispenseOrder(order(tx, now)), None).await;
    let report = hub.next_up(T).await.expect("DispenseReport over TLS");
    let AtmUp::DispenseReport(r) = &report.msg else {
        panic!("expected a report, got {:?}", report.msg)
    };
    assert_eq!(r.outcome, DispenseOutcome::Dispensed);
    assert_eq!(rig.sim.counters().delivered, 3);

    // Presence: retained "online"; the last will turns it to "offline" when the agent dies
    // without saying goodbye (dropping the handle aborts its tasks and the connection).
    hub.subscribe(&topics::atm_presence(ATM)).await;
    let online = loop {
        let (topic, payload) = hub.next_raw(T).await.expect("retained presence");
        if topic == topics::atm_presence(ATM) {
            break payload;
        }
    };
    assert_eq!(online, b"online");
    drop(agent);
    let offline = loop {
        let (topic, payload) = hub
            .next_raw(Duration::from_secs(40))
            .await
            .expect("last will");
        if topic == topics::atm_presence(ATM) {
            break payload;
        }
    };
    assert_eq!(offline, b"offline");
}
