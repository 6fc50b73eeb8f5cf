//! The agent in-process against a real broker, the LCDM simulator on a pty and a scripted
//! hub: full withdrawal, forged and repeated orders, broker restart mid-flow, a long hub
//! outage whose queued messages are all delivered, and a dispenser missing at start-up or
//! going silent.

mod support;

use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::store::{JournalKind, Store};
use qrcash_agent::{Agent, AgentEvent, Screen};
use qrcash_hardware::camera::{SyntheticCamera, SyntheticScene};
use qrcash_hardware::dispenser::Dispenser;
use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser};
use qrcash_hardware::dispenser::reopen::Reopening;
use qrcash_protocol::messages::{AtmDown, AtmUp, AwaitConfirmation, DispenseOutcome};
use qrcash_protocol::{
    Amount, Clock, Currency, ManualClock, PrivateKey, Signer, SystemClock, TxId,
};
use support::{Rig, ScriptedHub, order, wait_event};

const T: Duration = Duration::from_secs(20);

fn camera() -> SyntheticCamera {
    SyntheticCamera::with_scene(
        640,
        480,
        SyntheticScene {
            noise_sigma: 0.0,
            ..SyntheticScene::default()
        },
    )
}

fn await_confirmation(tx: TxId, now: u64) -> AtmDown {
    AtmDown::AwaitConfirmation(AwaitConfirmation {
        tx_id: tx,
        amount: Amount::new(12_000, Currency::JPY),
        confirm_by: now + 60,
    })
}

/// A customer shows a fresh code; the hub acknowledges it and asks for the phone's
/// confirmation; returns once the ATM shows the confirm screen.
async fn to_confirm_screen(
    rig: &Rig,
    hub: &mut ScriptedHub,
    cam: &SyntheticCamera,
    events: &mut tokio::sync::broadcast::Receiver<AgentEvent>,
) -> (TxId, u64) {
    let now = SystemClock.now();
    let tx = TxId::random();
    show_and_await_confirmation(hub, cam, events, &rig.code(tx, now), tx, now).await;
    (tx, now)
}

/// The camera reads `code` (for `tx`); the hub acknowledges it and asks for the phone's
/// confirmation; returns once the ATM shows the confirm screen.
async fn show_and_await_confirmation(
    hub: &mut ScriptedHub,
    cam: &SyntheticCamera,
    events: &mut tokio::sync::broadcast::Receiver<AgentEvent>,
    code: &str,
    tx: TxId,
    now: u64,
) {
    cam.show(code).unwrap();
    let presented = hub.next_up(T).await.expect("CodePresented");
    hub.ack(&presented.jti).await;
    hub.send(await_confirmation(tx, now), Some(&presented.jti))
        .await;
    wait_event(events, T, "confirm screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::ConfirmOnPhone { .. }))
    })
    .await;
    cam.clear();
}

/// The hub sends an order for `tx`; returns once the ATM reports it dispensed (the report
/// acknowledged).
async fn order_is_dispensed(hub: &mut ScriptedHub, tx: TxId, now: u64) {
    let o = order(tx, now);
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let report = hub.next_up(T).await.expect("DispenseReport");
    hub.ack(&report.jti).await;
    let AtmUp::DispenseReport(r) = &report.msg else {
        panic!("expected DispenseReport, got {:?}", report.msg)
    };
    assert_eq!(
        (r.order_id, r.outcome),
        (o.order_id, DispenseOutcome::Dispensed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_withdrawal_dispenses_once_and_refuses_forgeries_and_repeats() {
    let rig = Rig::new();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let cam = camera();
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
    let token = rig.code(tx, now);
    cam.show(&token).unwrap();
    let presented = hub.next_up(T).await.expect("CodePresented");
    let AtmUp::CodePresented(p) = &presented.msg else {
        panic!("expected CodePresented, got {:?}", presented.msg)
    };
    assert_eq!(p.token, token);
    hub.ack(&presented.jti).await;
    hub.send(await_confirmation(tx, now), Some(&presented.jti))
        .await;
    wait_event(&mut events, T, "confirm screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::ConfirmOnPhone { .. }))
    })
    .await;
    cam.clear();

    // A forged order (right shape, wrong key) changes nothing.
    let mallory = Signer::new("hub", PrivateKey::generate());
    let forged = mallory.seal(&qrcash_protocol::envelope::Claims::new(
        "hub",
        support::ATM,
        999,
        now,
        Duration::from_secs(60),
        AtmDown::DispenseOrder(order(tx, now)),
    ));
    hub.send_raw(forged.into_bytes()).await;
    wait_event(&mut events, T, "inbound rejection", |e| {
        matches!(e, AgentEvent::InboundRejected { .. })
    })
    .await;
    assert_eq!(rig.sim.counters().delivered, 0);

    let o = order(tx, now);
    let order_jti = hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let report = hub.next_up(T).await.expect("DispenseReport");
    let AtmUp::DispenseReport(r) = &report.msg else {
        panic!("expected DispenseReport, got {:?}", report.msg)
    };
    assert_eq!(
        (r.order_id, r.outcome, r.dispensed.minor),
        (o.order_id, DispenseOutcome::Dispensed, 12_000)
    );
    assert_eq!(
        rig.sim.counters().delivered,
        3,
        "one 10,000 and two 1,000 notes"
    );
    hub.ack(&report.jti).await;
    wait_event(
        &mut events,
        T,
        "report delivered",
        |e| matches!(e, AgentEvent::Delivered { kind, .. } if kind == "DispenseReport"),
    )
    .await;

    // The same order again (a new message): answered with the stored report, not dispensed.
    hub.send(AtmDown::DispenseOrder(o.clone()), Some(&order_jti))
        .await;
    let again = hub.next_up(T).await.expect("stored report");
    let AtmUp::DispenseReport(r2) = &again.msg else {
        panic!("expected the stored DispenseReport, got {:?}", again.msg)
    };
    assert_eq!(r2, r);
    assert_ne!(again.jti, report.jti);
    hub.ack(&again.jti).await;
    wait_event(
        &mut events,
        T,
        "stored report delivered",
        |e| matches!(e, AgentEvent::Delivered { jti, .. } if *jti == again.jti),
    )
    .await;
    assert_eq!(rig.sim.counters().delivered, 3, "never dispensed twice");

    agent.shutdown().await;
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    let kinds: Vec<String> = store
        .journal_entries(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.tx_id.as_deref() == Some(&tx.to_string()))
        .map(|e| e.kind)
        .collect();
    for k in [
        "code_read",
        "presented",
        "await_confirmation",
        "order_received",
        "dispense_started",
        "device_outcome",
        "reported",
        "order_refused",
    ] {
        assert!(kinds.iter().any(|x| x == k), "journal lacks {k}: {kinds:?}");
    }
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(pos("dispense_started") < pos("device_outcome"));
    assert_eq!(
        store
            .journal_of_kind(JournalKind::DispenseStarted)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.outbox_stats().unwrap().messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_flow_then_the_order_is_still_served() {
    let mut rig = Rig::new();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let cam = camera();
    let agent = Agent::start(rig.config(), Box::new(cam.clone()), rig.dispenser())
        .await
        .unwrap();
    let mut events = agent.subscribe();
    wait_event(&mut events, T, "link up", |e| {
        matches!(e, AgentEvent::Link { up: true })
    })
    .await;
    let (tx, now) = to_confirm_screen(&rig, &mut hub, &cam, &mut events).await;

    rig.broker.stop();
    wait_event(&mut events, T, "link down", |e| {
        matches!(e, AgentEvent::Link { up: false })
    })
    .await;
    rig.broker.start_again();
    wait_event(&mut events, T, "link up again", |e| {
        matches!(e, AgentEvent::Link { up: true })
    })
    .await;

    let seq = hub.seq();
    drop(hub);
    let mut hub = ScriptedHub::connect(&rig, seq).await;
    let o = order(tx, now);
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let report = hub
        .next_up(T)
        .await
        .expect("DispenseReport after the restart");
    let AtmUp::DispenseReport(r) = &report.msg else {
        panic!("expected DispenseReport, got {:?}", report.msg)
    };
    assert_eq!(
        (r.order_id, r.outcome),
        (o.order_id, DispenseOutcome::Dispensed)
    );
    assert_eq!(rig.sim.counters().delivered, 3);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_during_a_long_hub_outage_are_all_delivered_in_order() {
    let rig = Rig::new();
    let clock = ManualClock::new(SystemClock.now());
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let cam = camera();
    let agent = Agent::start_with_clock(
        rig.config(),
        Box::new(cam.clone()),
        rig.dispenser(),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let mut events = agent.subscribe();
    wait_event(&mut events, T, "link up", |e| {
        matches!(e, AgentEvent::Link { up: true })
    })
    .await;

    // Session A reaches the dispenser; the hub goes away right after sending the order.
    let now = clock.now();
    let tx_a = TxId::random();
    cam.show(&rig.code(tx_a, now)).unwrap();
    let presented = hub.next_up(T).await.expect("CodePresented A");
    hub.ack(&presented.jti).await;
    hub.send(await_confirmation(tx_a, now), Some(&presented.jti))
        .await;
    wait_event(&mut events, T, "confirm screen", |e| {
        matches!(e, AgentEvent::Screen(Screen::ConfirmOnPhone { .. }))
    })
    .await;
    cam.clear();
    let o = order(tx_a, now);
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let seq = hub.seq();
    drop(hub);
    wait_event(&mut events, T, "report A queued", |e| {
        matches!(e, AgentEvent::Dispensed(_))
    })
    .await;

    // Session B is presented to nobody and times out.
    let tx_b = TxId::random();
    cam.show(&rig.code(tx_b, clock.now())).unwrap();
    wait_event(
        &mut events,
        T,
        "code B queued",
        |e| matches!(e, AgentEvent::Queued { kind, .. } if kind == "CodePresented"),
    )
    .await;
    cam.clear();
    clock.advance(Duration::from_secs(31));
    wait_event(
        &mut events,
        T,
        "cancel B queued",
        |e| matches!(e, AgentEvent::Queued { kind, .. } if kind == "SessionCancelled"),
    )
    .await;

    // Two days later the hub is back.
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    let mut hub = ScriptedHub::connect(&rig, seq)
        .await
        .with_clock(Arc::new(clock.clone()));
    let mut seen: Vec<qrcash_protocol::envelope::Claims<AtmUp>> = Vec::new();
    while seen.len() < 3 {
        let m = hub.next_up(T).await.expect("queued message");
        hub.ack(&m.jti).await;
        if !seen.iter().any(|s| s.jti == m.jti) {
            seen.push(m);
        }
    }
    // A hub that comes back mid-stream may first see the tail of a resend round: it
    // orders by the sender's seq, which follows the queue order.
    seen.sort_by_key(|c| c.seq);
    let kinds: Vec<&str> = seen
        .iter()
        .map(|c| match &c.msg {
            AtmUp::DispenseReport(r) if r.order_id == o.order_id => "report A",
            AtmUp::CodePresented(_) => "presented B",
            AtmUp::SessionCancelled(s) if s.tx_id == tx_b => "cancelled B",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["report A", "presented B", "cancelled B"]);
    // Everything is acknowledged: the outbox drains and each message is delivered once.
    for _ in 0..3 {
        wait_event(&mut events, T, "delivered", |e| {
            matches!(e, AgentEvent::Delivered { .. })
        })
        .await;
    }
    agent.shutdown().await;
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(store.outbox_stats().unwrap().messages, 0);
    let delivered = store.journal_of_kind(JournalKind::Delivered).unwrap();
    let mut jtis: Vec<String> = delivered
        .iter()
        .map(|e| e.detail["jti"].as_str().unwrap_or_default().to_owned())
        .collect();
    jtis.sort();
    jtis.dedup();
    assert_eq!(
        jtis.len(),
        delivered.len(),
        "each message delivered exactly once"
    );
    assert!(seen.iter().all(|m| jtis.contains(&m.jti)));
    assert_eq!(rig.sim.counters().delivered, 3);
}

/// Account-takeover issue, hole 10: an order that arrives again while it is dispensing (the
/// hub resent it, or a replay of the hub's message) is never answered `OrderRefused`: notes
/// may be leaving for it. The only answer is its one report. (The other way to a repeat of a
/// dispensing order without an outcome, after a crash, is closed by recovery, which reports
/// such an order in doubt before any message is handled: `agent_crash.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_repeated_while_it_dispenses_is_never_refused() {
    let rig = Rig::new();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let cam = camera();
    let agent = Agent::start(rig.config(), Box::new(cam.clone()), rig.dispenser())
        .await
        .unwrap();
    let mut events = agent.subscribe();
    wait_event(&mut events, T, "link up", |e| {
        matches!(e, AgentEvent::Link { up: true })
    })
    .await;
    let (tx, now) = to_confirm_screen(&rig, &mut hub, &cam, &mut events).await;

    let o = order(tx, now);
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    wait_event(&mut events, T, "dispensing", |e| {
        matches!(e, AgentEvent::Screen(Screen::Dispensing { .. }))
    })
    .await;
    // The same order twice more while the notes are being counted out.
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let mut reports = 0;
    while let Some(m) = hub.next_up(Duration::from_secs(3)).await {
        match &m.msg {
            AtmUp::DispenseReport(r) => {
                assert_eq!(r.order_id, o.order_id);
                reports += 1;
                hub.ack(&m.jti).await;
            }
            AtmUp::OrderRefused(r) => panic!("a dispensing order was refused: {r:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(reports >= 1, "the order's report");
    assert_eq!(rig.sim.counters().delivered, 3, "dispensed once");
    agent.shutdown().await;
}

/// A dispenser that is missing when the agent starts keeps the ATM out of service instead of
/// stopping the agent, and the ATM comes into service once the device answers. A dispenser
/// that stops answering later takes the idle ATM out of service with an alarm in the
/// journal; once it answers again it is recovered, and the ATM serves the next customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_silent_dispenser_takes_the_atm_out_of_service_until_it_answers() {
    let rig = Rig::new();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let mut config = rig.config();
    config.timing.device_check_s = 1;
    // The port is a stable link (as a udev rule makes one) that points nowhere yet.
    let link = rig.path("lcdm");
    let lcdm = LcdmConfig {
        port: link.to_string_lossy().into_owned(),
        response_timeout_ms: 500,
        ..rig.dispenser_config()
    };
    let dispenser = Reopening::new(
        2,
        Box::new(move || {
            // The opener `qrcash-agent` uses.
            LcdmDispenser::open_checked(lcdm.clone()).map(|d| Box::new(d) as Box<dyn Dispenser>)
        }),
    );
    let cam = camera();
    let agent = Agent::start(config, Box::new(cam.clone()), Box::new(dispenser))
        .await
        .unwrap();
    let mut events = agent.subscribe();
    let mut screen = agent.screen_watch();
    tokio::time::timeout(
        T,
        screen.wait_for(|s| matches!(s, Screen::OutOfService { .. })),
    )
    .await
    .expect("no dispenser: out of service")
    .unwrap();
    let in_service = |e: &AgentEvent| {
        matches!(
            e,
            AgentEvent::Screen(Screen::Idle | Screen::ServiceUnavailable)
        )
    };

    // The device appears: recovered, in service.
    std::os::unix::fs::symlink(rig.sim.port_path(), &link).unwrap();
    wait_event(
        &mut events,
        T,
        "in service once the device answers",
        in_service,
    )
    .await;

    // It goes silent while idle: out of service, with an alarm.
    rig.sim.power_off();
    wait_event(&mut events, T, "device fault in the journal", |e| {
        matches!(
            e,
            AgentEvent::Journal {
                kind: JournalKind::DeviceFault,
                ..
            }
        )
    })
    .await;
    tokio::time::timeout(
        T,
        screen.wait_for(|s| matches!(s, Screen::OutOfService { .. })),
    )
    .await
    .expect("out of service after the alarm")
    .unwrap();
    // No customer is taken meanwhile: a code shown now is not presented to the hub.
    let now = SystemClock.now();
    cam.show(&rig.code(TxId::random(), now)).unwrap();
    assert!(
        hub.next_up(Duration::from_secs(2)).await.is_none(),
        "an ATM out of service presents no code"
    );
    cam.clear();

    // Power back: recovered, in service, and the next customer gets cash.
    rig.sim.power_on();
    wait_event(&mut events, T, "in service again", in_service).await;
    let (tx, now) = to_confirm_screen(&rig, &mut hub, &cam, &mut events).await;
    order_is_dispensed(&mut hub, tx, now).await;
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(
        store
            .journal_of_kind(JournalKind::DeviceFault)
            .unwrap()
            .len(),
        2,
        "one alarm at start-up (no device) and one for the outage"
    );
    agent.shutdown().await;
}

/// The hub's key set (`docs/protocol.md` §3): a set endorsed by someone the ATM does not
/// trust teaches nothing and is journalled as refused; the set endorsed by the hub key the
/// ATM was provisioned with teaches the new key, which then signs codes and orders the ATM
/// accepts, while messages signed by the old key are refused; the ATM keeps what it learned
/// across a restart with no key set on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atm_learns_a_new_hub_key_only_from_an_endorsement_it_trusts() {
    use qrcash_protocol::keyset::{HubKeys, KeySet};
    let rig = Rig::new();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let now = SystemClock.now();
    let mallory = PrivateKey::generate();
    let forged = HubKeys::new(&KeySet::new("hub", now, mallory.public(), &[]), &[&mallory]);
    hub.publish_key_set(forged.to_bytes()).await;
    let cam = camera();
    let agent = Agent::start(rig.config(), Box::new(cam.clone()), rig.dispenser())
        .await
        .unwrap();
    let mut events = agent.subscribe();
    wait_event(&mut events, T, "the forged key set refused", |e| {
        matches!(e, AgentEvent::InboundRejected { error } if error.contains("no endorsement by a trusted key"))
    })
    .await;

    // The hub rotates: the new key, endorsed by the old one.
    let new = PrivateKey::generate();
    let set = KeySet::new("hub", now, new.public(), &[rig.hub_key.public().clone()]);
    hub.publish_key_set(HubKeys::new(&set, &[&new, &rig.hub_key]).to_bytes())
        .await;
    wait_event(&mut events, T, "the new key learned", |e| {
        matches!(
            e,
            AgentEvent::Journal {
                kind: JournalKind::HubKey,
                ..
            }
        )
    })
    .await;
    hub.sign_with(new.clone());
    let tx = TxId::random();
    let code = qrcash_protocol::CodeToken::issue(&new, tx, now + 600);
    show_and_await_confirmation(&mut hub, &cam, &mut events, &code, tx, now).await;
    order_is_dispensed(&mut hub, tx, now).await;
    // The old key no longer signs messages: the hub's current key is the new one.
    hub.sign_with(rig.hub_key.clone());
    hub.send(AtmDown::DispenseOrder(order(tx, now)), None).await;
    hub.sign_with(new.clone());
    wait_event(
        &mut events,
        T,
        "a message signed by the old key refused",
        |e| matches!(e, AgentEvent::InboundRejected { error } if error.contains("no key is known")),
    )
    .await;
    agent.shutdown().await;

    // A restart with no key set on the broker still trusts what it learned.
    hub.publish_key_set(Vec::new()).await;
    let agent = Agent::start(rig.config(), Box::new(cam.clone()), rig.dispenser())
        .await
        .unwrap();
    let mut events = agent.subscribe();
    let tx = TxId::random();
    let code = qrcash_protocol::CodeToken::issue(&new, tx, now + 600);
    show_and_await_confirmation(&mut hub, &cam, &mut events, &code, tx, now).await;
    order_is_dispensed(&mut hub, tx, now).await;
    agent.shutdown().await;

    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    let state = store.hub_trust_state().unwrap().unwrap();
    assert_eq!(state.current, Some(new.public().to_jwk()));
    assert_eq!(state.endorsed_by, Some(rig.hub_key.kid().to_string()));
    assert!(
        store
            .journal_of_kind(JournalKind::InboundRejected)
            .unwrap()
            .iter()
            .any(|e| e.detail["topic"] == qrcash_protocol::topics::HUB_KEYS)
    );
}
