//! An in-process ATM for the end-to-end suites: the real agent with a synthetic camera and
//! an LCDM-2000 simulator on a pseudo-terminal, set up the same way everywhere.
//!
//! Cassettes hold ¥10,000 and ¥1,000 notes; resends are quick so outage tests stay short.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qrcash_agent::config::{CassetteConfig, OutboxSettings, Timing};
use qrcash_agent::{Agent, AgentConfig, AgentEvent, AgentHandle, Screen};
use qrcash_hardware::camera::{SyntheticCamera, SyntheticScene};
use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser, LcdmModel};
use qrcash_hardware::dispenser::sim::{SimConfig, SimHandle, Simulator};
use qrcash_io::BrokerConfig;
use qrcash_io::KeyFile;
use qrcash_protocol::{Clock, PrivateKey, PublicKey};
use tokio::sync::broadcast;

/// A running ATM.
pub struct TestAtm {
    /// The agent.
    pub agent: AgentHandle,
    /// Its events, subscribed before it connected.
    pub events: broadcast::Receiver<AgentEvent>,
    /// What its camera sees: `show(token)` is a customer holding up a phone.
    pub camera: SyntheticCamera,
    /// The dispenser simulator, whose counters say what physically left the machine.
    pub sim: SimHandle,
}

/// Starts ATM `atm_id` with `notes` notes per cassette, its files in `dir`, signing with
/// `atm_key` and trusting `hub_key`, on the broker at `broker_url`; returns once its link is
/// up.
///
/// # Panics
/// If any part fails to start within 20 s: the suites cannot go on without it.
pub async fn start(
    dir: &Path,
    atm_id: &str,
    atm_key: &PrivateKey,
    hub_key: &PublicKey,
    broker_url: &str,
    notes: u32,
    clock: Arc<dyn Clock>,
) -> TestAtm {
    let broker = BrokerConfig::plain(broker_url);
    start_on(dir, atm_id, atm_key, hub_key, broker, notes, clock).await
}

/// [`start`] on a broker reached with `broker` (TLS and a client certificate, say).
///
/// # Panics
/// As [`start`].
pub async fn start_on(
    dir: &Path,
    atm_id: &str,
    atm_key: &PrivateKey,
    hub_key: &PublicKey,
    broker: BrokerConfig,
    notes: u32,
    clock: Arc<dyn Clock>,
) -> TestAtm {
    let broker_url = broker.url.clone();
    atm_key.save(&dir.join("atm.jwk")).expect("ATM key");
    std::fs::write(
        dir.join("hub.pub.jwk"),
        serde_json::to_string(&hub_key.to_jwk()).expect("hub JWK"),
    )
    .expect("hub key file");
    let sim = Simulator::spawn(SimConfig {
        note_interval: Duration::from_millis(5),
        ..SimConfig::lcdm2000(notes, notes)
    })
    .expect("dispenser simulator");
    let dispenser = LcdmDispenser::open(LcdmConfig {
        journal: Some(dir.join("dispenser.json")),
        ..LcdmConfig::new(sim.port_path(), LcdmModel::Lcdm2000)
    })
    .expect("dispenser driver");
    let cassette = |denomination| CassetteConfig {
        denomination,
        notes,
    };
    let config = AgentConfig {
        atm_id: atm_id.into(),
        hub_id: "hub".into(),
        key_file: dir.join("atm.jwk"),
        hub_keys: vec![dir.join("hub.pub.jwk")],
        enrolment_file: None,
        database: dir.join("agent.db"),
        currency: "JPY".into(),
        cassettes: vec![cassette(10_000), cassette(1_000)],
        broker,
        camera: None,
        dispenser: None,
        outbox: OutboxSettings {
            resend_initial_ms: 300,
            resend_max_ms: 2_000,
            ..OutboxSettings::default()
        },
        timing: Timing {
            min_frame_interval_ms: 30,
            ..Timing::default()
        },
    };
    let camera = SyntheticCamera::with_scene(
        640,
        480,
        SyntheticScene {
            noise_sigma: 0.0,
            ..SyntheticScene::default()
        },
    );
    let agent =
        Agent::start_with_clock(config, Box::new(camera.clone()), Box::new(dispenser), clock)
            .await
            .expect("agent");
    let events = agent.subscribe();
    // The screen is a watch, so a link that came up before this line is seen too (an event
    // sent before `subscribe` is not).
    let mut screen = agent.screen_watch();
    tokio::time::timeout(
        Duration::from_secs(20),
        screen.wait_for(|s| *s == Screen::Idle),
    )
    .await
    .unwrap_or_else(|_| panic!("the agent did not connect to {broker_url}"))
    .expect("the agent runs");
    TestAtm {
        agent,
        events,
        camera,
        sim,
    }
}

/// Waits for the agent event `pred` accepts, skipping others.
///
/// # Panics
/// If none comes within `within`; the message names `what`.
pub async fn wait_event(
    within: std::time::Duration,
    events: &mut tokio::sync::broadcast::Receiver<qrcash_agent::AgentEvent>,
    what: &str,
    mut pred: impl FnMut(&qrcash_agent::AgentEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if pred(&e) => return,
            Ok(_) => {}
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}
