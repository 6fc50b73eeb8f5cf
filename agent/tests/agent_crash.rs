//! Power-loss and crash recovery with the real `qrcash-agent` binary as a child process:
//! the agent aborts itself at a named step (crash hook), is restarted, settles the
//! interrupted order as `InDoubt` with the counts the dispenser knows, and never dispenses
//! the order again — the simulator's delivered-notes counter proves it.

mod support;

use std::process::Command;
use std::time::Duration;

use qrcash_agent::store::{JournalKind, Store};
use qrcash_protocol::messages::{AtmDown, AtmUp, AwaitConfirmation, DispenseOutcome};
use qrcash_protocol::{Amount, Clock, Currency, SystemClock, TxId};
use support::{Rig, ScriptedHub, cli, config_file, order, spawn_agent, wait_exit, write_png};

const T: Duration = Duration::from_secs(30);

/// Runs one session up to the order with the agent set to crash at `step`; restarts it;
/// returns the recovered report and the hub for further checks.
async fn crash_and_recover(
    rig: &Rig,
    step: &str,
) -> (
    qrcash_protocol::messages::DispenseReport,
    ScriptedHub,
    qrcash_protocol::messages::DispenseOrder,
) {
    let config = config_file(rig);
    let mut hub = ScriptedHub::connect(rig, 0).await;
    write_png(&rig.path("code.png"), None);
    let mut agent = spawn_agent(&config, Some(step));
    let now = SystemClock.now();
    let tx = TxId::random();
    write_png(&rig.path("code.png"), Some(&rig.code(tx, now)));
    let presented = loop {
        let m = hub
            .next_up(T)
            .await
            .expect("CodePresented from the child agent");
        if matches!(m.msg, AtmUp::CodePresented(_)) {
            break m;
        }
    };
    write_png(&rig.path("code.png"), None);
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
    let o = order(tx, now);
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut agent, T))
        .await
        .unwrap();
    assert!(!status.success(), "the crash hook aborts the process");

    // Restart without the hook: recovery settles the order before anything else.
    let mut agent = spawn_agent(&config, None);
    let report = loop {
        let m = hub.next_up(T).await.expect("recovered report");
        if let AtmUp::DispenseReport(r) = &m.msg {
            hub.ack(&m.jti).await;
            break r.clone();
        }
    };
    // The hub (or a replay of its message) sends the order again: it is never executed.
    hub.send(AtmDown::DispenseOrder(o.clone()), None).await;
    let again = loop {
        let m = hub.next_up(T).await.expect("answer to the repeated order");
        if let AtmUp::DispenseReport(r) = &m.msg {
            hub.ack(&m.jti).await;
            break r.clone();
        }
    };
    assert_eq!(again, report, "a repeat gets the stored report");
    let _ = agent.kill();
    let _ = agent.wait();
    (report, hub, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_write_ahead_is_recovered_in_doubt_without_any_dispense() {
    let rig = Rig::new();
    let (report, _hub, o) = crash_and_recover(&rig, "after_write_ahead").await;
    assert_eq!(report.order_id, o.order_id);
    assert_eq!(
        report.outcome,
        DispenseOutcome::InDoubt,
        "never success or failure by guess"
    );
    assert_eq!(report.dispensed.minor, 0);
    assert_eq!(
        rig.sim.counters().delivered,
        0,
        "nothing was ever dispensed"
    );
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(
        store
            .journal_of_kind(JournalKind::DispenseStarted)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.journal_of_kind(JournalKind::Recovered).unwrap().len(),
        1
    );
    assert!(store.unfinished_orders().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_device_paid_out_reports_the_known_counts_in_doubt_once() {
    let rig = Rig::new();
    let (report, _hub, o) = crash_and_recover(&rig, "after_device_outcome").await;
    assert_eq!(report.order_id, o.order_id);
    assert_eq!(report.outcome, DispenseOutcome::InDoubt);
    assert_eq!(
        report.dispensed.minor, 12_000,
        "the driver's counts for this order"
    );
    assert_eq!(
        rig.sim.counters().delivered,
        3,
        "paid out once, never again"
    );
}

/// Found by the fault-injection campaign: the agent persisted the hub's replay window (own
/// transaction) before applying the `Ack`. Killed in between, it restarted with the Ack's
/// `seq` marked as seen and the message still in its outbox; the hub answers the resent
/// duplicate with its stored Ack verbatim (same `seq`), which the agent then refused as a
/// replay — forever: the message was never acknowledged and was resent every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_accepting_an_ack_and_applying_it_does_not_block_the_outbox() {
    use qrcash_protocol::Claims;
    use qrcash_protocol::messages::Ack;

    let rig = Rig::new();
    let config = config_file(&rig);
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    write_png(&rig.path("code.png"), None);
    let mut agent = spawn_agent(&config, Some("before_applying_ack"));
    let tx = TxId::random();
    write_png(
        &rig.path("code.png"),
        Some(&rig.code(tx, SystemClock.now())),
    );
    let presented = next_presented(&mut hub, &rig).await;
    write_png(&rig.path("code.png"), None);
    // The hub's Ack, sealed once and kept: a real hub resends exactly these bytes for a
    // duplicate.
    let ack = rig
        .hub()
        .seal(&Claims::new(
            "hub",
            support::ATM,
            1,
            SystemClock.now(),
            Duration::from_secs(300),
            AtmDown::Ack(Ack {
                ids: vec![presented.jti.clone()],
            }),
        ))
        .into_bytes();
    hub.send_raw(ack.clone()).await;
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut agent, T))
        .await
        .unwrap();
    assert!(!status.success(), "the crash hook aborts the process");

    // Restarted, the agent resends CodePresented; the hub answers with the stored Ack.
    let mut agent = spawn_agent(&config, None);
    let again = next_presented(&mut hub, &rig).await;
    assert_eq!(
        again.jti, presented.jti,
        "the outbox resends the same message"
    );
    hub.send_raw(ack).await;
    let deadline = std::time::Instant::now() + T;
    let drained = loop {
        let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
        if !store.has_pending_kind("CodePresented").unwrap() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        // The agent is a child process: its database is the only thing to watch.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        drained,
        "the Ack resent after the crash must still acknowledge the message"
    );
}

/// The next `CodePresented`, leaving heartbeats unacknowledged (an Ack would fire the hook).
async fn next_presented(hub: &mut ScriptedHub, rig: &Rig) -> qrcash_protocol::Claims<AtmUp> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (_, bytes) = hub.next_raw(left).await.expect("CodePresented");
        let claims: qrcash_protocol::Claims<AtmUp> =
            qrcash_protocol::Sealed::parse(&bytes, qrcash_protocol::MAX_UPLINK_BYTES)
                .unwrap()
                .open(rig.atm_key.public())
                .unwrap();
        if matches!(claims.msg, AtmUp::CodePresented(_)) {
            return claims;
        }
    }
}

/// The technician's cassette commands on the real binary: the counts come from the agent's
/// database (seeded once from `agent.toml`), a count set by hand is journalled and is what
/// `status` shows, and an unknown denomination changes nothing.
#[test]
fn cassette_counts_are_kept_in_the_database_and_set_by_the_technician() {
    let rig = Rig::new();
    let config = config_file(&rig);
    let run = |args: &[&str]| cli(&config, args);
    let counts = |json: &str| -> Vec<(u64, u64)> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["denomination"].as_u64().unwrap(),
                    c["notes"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (ok, out, err) = run(&["cassettes"]);
    assert!(ok, "{err}");
    assert_eq!(counts(&out), vec![(10_000, 100), (1_000, 100)]);

    let (ok, out, err) = run(&[
        "cassettes",
        "set",
        "--denomination",
        "1000",
        "--notes",
        "2000",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("1000: 100 -> 2000"), "{err}");
    assert_eq!(counts(&out), vec![(10_000, 100), (1_000, 2_000)]);

    let (ok, _, err) = run(&["cassettes", "set", "--denomination", "5000", "--notes", "1"]);
    assert!(!ok);
    assert!(err.contains("no cassette of denomination 5000"), "{err}");
    let (_, out, _) = run(&["cassettes"]);
    assert_eq!(
        counts(&out),
        vec![(10_000, 100), (1_000, 2_000)],
        "nothing changed"
    );

    let (ok, out, err) = run(&["status"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["cassettes"][1]["notes"], 2_000);
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(
        store
            .journal_of_kind(JournalKind::CassetteSet)
            .unwrap()
            .len(),
        1
    );
}

/// `qrcash-agent hub-keys` on the real binary: the configured key and a learned one, what
/// each may sign; `forget` drops a learned key for good (journalled) and refuses a
/// configured one.
#[test]
fn the_technician_lists_and_forgets_learned_hub_keys() {
    use qrcash_protocol::keyset::{HubKeys, HubTrust, KeySet};
    let rig = Rig::new();
    let config = config_file(&rig);
    let new = qrcash_protocol::PrivateKey::generate();
    {
        let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
        let mut trust = HubTrust::new(vec![rig.hub_key.public().clone()], None);
        let set = KeySet::new("hub", 100, new.public(), &[rig.hub_key.public().clone()]);
        let change = trust
            .apply(&HubKeys::new(&set, &[&rig.hub_key]).to_bytes(), "hub")
            .unwrap();
        store.save_hub_trust(&trust, &change, 100).unwrap();
    }
    let run = |args: &[&str]| cli(&config, args);
    let keys = |json: &str| -> Vec<(String, String, String)> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let s = |f: &str| k[f].as_str().unwrap().to_owned();
                (s("kid"), s("from"), s("trusted_for"))
            })
            .collect()
    };
    let (ok, out, err) = run(&["hub-keys"]);
    assert!(ok, "{err}");
    assert_eq!(
        keys(&out),
        vec![
            (
                rig.hub_key.kid().to_string(),
                "configuration".to_owned(),
                "codes".to_owned()
            ),
            (
                new.kid().to_string(),
                "key set".to_owned(),
                "messages and codes".to_owned()
            ),
        ]
    );
    let (ok, out, err) = run(&["hub-keys", "forget", new.kid().as_str()]);
    assert!(ok, "{err}");
    assert_eq!(
        keys(&out),
        vec![(
            rig.hub_key.kid().to_string(),
            "configuration".to_owned(),
            "messages and codes".to_owned()
        )]
    );
    let (ok, _, err) = run(&["hub-keys", "forget", new.kid().as_str()]);
    assert!(!ok);
    assert!(err.contains("already forgotten"), "{err}");
    let (ok, _, err) = run(&["hub-keys", "forget", rig.hub_key.kid().as_str()]);
    assert!(!ok, "a configured key is not forgotten: {err}");
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(
        store.journal_of_kind(JournalKind::HubKey).unwrap().len(),
        2,
        "learned, then forgotten"
    );
}

/// `qrcash-agent status` against the real process: while it runs, each figure says since
/// when it holds, the hub is reachable (the stand-in acknowledges the heartbeat) and the
/// camera's frames are counted; once it was killed and has been silent (its liveness dated
/// back as time passing would), it says the agent is not running and the figures are as last
/// recorded; after a clean stop (SIGINT) it says so at once. `dead-letters` lists and clears
/// what the hub refused for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_a_running_agent_from_a_stopped_one() {
    let rig = Rig::new();
    let config = config_file(&rig);
    // Heartbeats every 2 s (the file ends in `[timing]`): the first one the agent can send
    // must come well within the wait below. With the default 30 s, the tick at start can
    // pass before the link is up and the next one lands on the deadline (a CI failure).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("heartbeat_s = 2\n");
    std::fs::write(&config, text).unwrap();
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    write_png(&rig.path("code.png"), None);
    let status = || -> serde_json::Value {
        let (ok, out, err) = cli(&config, &["status"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let mut agent = spawn_agent(&config, None);
    // The stand-in acknowledges the start-up heartbeat while it waits.
    let deadline = std::time::Instant::now() + T;
    let live = loop {
        let _ = hub.next_up(Duration::from_millis(300)).await;
        let s = status();
        if s["agent"]["running"] == true && s["hub"]["reachable"] == true {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never live: {s:#}");
    };
    assert_eq!(live["link"]["value"], "up");
    assert!(live["link"]["since"].as_u64().is_some(), "{live:#}");
    assert_eq!(live["state"]["value"], "Idle");
    assert!(live["agent"]["note"].is_null());

    // Killed, and silent since.
    agent.kill().unwrap();
    agent.wait().unwrap();
    let now = SystemClock.now();
    {
        let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
        store
            .set_status_value("alive_at", &(now - 60).to_string())
            .unwrap();
    }
    let dead = status();
    assert_eq!(dead["agent"]["running"], false, "{dead:#}");
    assert!(
        dead["agent"]["note"]
            .as_str()
            .unwrap()
            .contains("not running")
    );
    assert_eq!(dead["hub"]["reachable"], false);
    assert_eq!(dead["link"]["value"], "up", "as last recorded");

    // Running again, then a clean stop.
    let agent = spawn_agent(&config, None);
    let deadline = std::time::Instant::now() + T;
    while status()["agent"]["running"] != true {
        assert!(std::time::Instant::now() < deadline, "not running again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    let mut agent = agent;
    wait_exit(&mut agent, T);
    let stopped = status();
    assert_eq!(stopped["agent"]["running"], false, "{stopped:#}");
    assert!(stopped["agent"]["stopped_at"].as_u64().is_some());
    assert!(stopped["camera"]["value"]["frames"].as_u64().unwrap() > 0);

    // Dead letters: listed, cleared once, journalled.
    {
        let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
        store
            .enqueue(qrcash_agent::store::Priority::Normal, now, |_| {
                qrcash_agent::store::Outgoing {
                    jti: "refused-1".into(),
                    kind: "CodePresented",
                    sealed: "x.y.z".into(),
                }
            })
            .unwrap();
        assert!(
            store
                .dead_letter(
                    "refused-1",
                    &qrcash_protocol::RejectReason::CodeAlreadyUsed,
                    "used",
                    now
                )
                .unwrap()
        );
    }
    let (ok, out, err) = cli(&config, &["dead-letters"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("refused-1") && out.contains("code_already_used"),
        "{out}"
    );
    let (ok, out, err) = cli(&config, &["dead-letters", "clear", "refused-1"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
    let (ok, _, err) = cli(&config, &["dead-letters", "clear", "refused-1"]);
    assert!(!ok && err.contains("no dead letter"), "{err}");
    let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
    assert_eq!(
        store
            .journal_of_kind(JournalKind::DeadLetterCleared)
            .unwrap()
            .len(),
        1
    );
}

/// `keygen --force` never replaces the key under a running agent or over messages queued
/// under it; with the agent stopped and the outbox empty it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_force_waits_for_a_stopped_agent_and_an_empty_outbox() {
    let rig = Rig::new();
    let config = config_file(&rig);
    write_png(&rig.path("code.png"), None);
    {
        let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
        store
            .enqueue(qrcash_agent::store::Priority::Normal, 1, |_| {
                qrcash_agent::store::Outgoing {
                    jti: "queued".into(),
                    kind: "Heartbeat",
                    sealed: "x.y.z".into(),
                }
            })
            .unwrap();
    }
    let (ok, _, err) = cli(&config, &["keygen", "--force"]);
    assert!(!ok && err.contains("outbox holds 1"), "{err}");
    {
        let mut store = Store::open(&rig.path("agent.db"), Default::default()).unwrap();
        store.ack(&["queued".into()], 2).unwrap();
    }
    let mut hub = ScriptedHub::connect(&rig, 0).await;
    let agent = spawn_agent(&config, None);
    let deadline = std::time::Instant::now() + T;
    loop {
        let _ = hub.next_up(Duration::from_millis(200)).await;
        let (_, out, _) = cli(&config, &["status"]);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if s["agent"]["running"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never running");
    }
    let (ok, _, err) = cli(&config, &["keygen", "--force"]);
    assert!(!ok && err.contains("agent is running"), "{err}");
    let before = std::fs::read_to_string(rig.path("atm.jwk")).unwrap();
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    let mut agent = agent;
    wait_exit(&mut agent, T);
    assert_eq!(
        std::fs::read_to_string(rig.path("atm.jwk")).unwrap(),
        before
    );
    let (ok, out, err) = cli(&config, &["keygen", "--force"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"x\""), "the new public JWK: {out}");
    assert_ne!(
        std::fs::read_to_string(rig.path("atm.jwk")).unwrap(),
        before
    );
}
