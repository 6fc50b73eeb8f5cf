//! Shared rig for the agent's end-to-end suites: a private Mosquitto, the LCDM simulator on
//! a pty, generated keys and configuration, and a scripted stand-in for the hub that signs
//! its messages with the hub key and verifies the agent's with the ATM key.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qrcash_agent::AgentConfig;
use qrcash_agent::config::{CassetteConfig, OutboxSettings, Timing};
use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmModel};
use qrcash_hardware::dispenser::sim::{SimConfig, SimHandle, Simulator};
use qrcash_io::BrokerConfig;
use qrcash_io::KeyFile;
use qrcash_protocol::envelope::{Claims, Sealed};
use qrcash_protocol::messages::{AtmDown, AtmUp, DispenseOrder, NoteCount};
use qrcash_protocol::{
    Amount, Clock, Currency, MAX_UPLINK_BYTES, OrderId, PrivateKey, Signer, TxId, topics,
};
use qrcash_testsupport::broker::Mosquitto;
use qrcash_testsupport::mqtt::TestClient;

pub const ATM: &str = "atm-1";

/// The agent's log goes to the test's captured output: shown only when the test fails.
/// `RUST_LOG` chooses the level (default `debug` for qrcash crates, `warn` for others).
pub fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,qrcash_agent=debug,qrcash_hardware=debug")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Everything one ATM test needs.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub hub_key: PrivateKey,
    pub atm_key: PrivateKey,
    pub sim: SimHandle,
    /// How the agent connects.
    pub atm_broker: BrokerConfig,
    /// How the scripted hub connects.
    pub hub_broker: BrokerConfig,
}

impl Rig {
    pub fn new() -> Rig {
        let broker = Mosquitto::start();
        let plain = BrokerConfig::plain(broker.url());
        Rig::with_broker(broker, plain.clone(), plain)
    }

    /// A rig on a given broker (e.g. TLS with client certificates and the production ACL).
    pub fn with_broker(
        broker: Mosquitto,
        atm_broker: BrokerConfig,
        hub_broker: BrokerConfig,
    ) -> Rig {
        log_to_test_output();
        let dir = tempfile::tempdir().unwrap();
        let hub_key = PrivateKey::generate();
        let atm_key = PrivateKey::generate();
        atm_key.save(&dir.path().join("atm.jwk")).unwrap();
        std::fs::write(
            dir.path().join("hub.pub.jwk"),
            serde_json::to_string(&hub_key.public().to_jwk()).unwrap(),
        )
        .unwrap();
        let sim = Simulator::spawn(SimConfig {
            note_interval: Duration::from_millis(5),
            ..SimConfig::lcdm2000(100, 100)
        })
        .unwrap();
        Rig {
            dir,
            broker,
            hub_key,
            atm_key,
            sim,
            atm_broker,
            hub_broker,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent configuration (no camera section: tests pass the frame source in).
    pub fn config(&self) -> AgentConfig {
        AgentConfig {
            atm_id: ATM.into(),
            hub_id: "hub".into(),
            key_file: self.path("atm.jwk"),
            hub_keys: vec![self.path("hub.pub.jwk")],
            enrolment_file: None,
            database: self.path("agent.db"),
            currency: "JPY".into(),
            cassettes: vec![
                CassetteConfig {
                    denomination: 10_000,
                    notes: 100,
                },
                CassetteConfig {
                    denomination: 1_000,
                    notes: 100,
                },
            ],
            broker: self.atm_broker.clone(),
            camera: None,
            dispenser: Some(self.dispenser_config()),
            outbox: OutboxSettings {
                resend_initial_ms: 200,
                resend_max_ms: 1_000,
                ..OutboxSettings::default()
            },
            timing: Timing {
                min_frame_interval_ms: 30,
                ..Timing::default()
            },
        }
    }

    pub fn dispenser_config(&self) -> LcdmConfig {
        LcdmConfig {
            journal: Some(self.path("dispenser-journal.json")),
            ..LcdmConfig::new(self.sim.port_path(), LcdmModel::Lcdm2000)
        }
    }

    pub fn dispenser(&self) -> Box<dyn qrcash_hardware::dispenser::Dispenser> {
        Box::new(
            qrcash_hardware::dispenser::lcdm::LcdmDispenser::open(self.dispenser_config()).unwrap(),
        )
    }

    pub fn hub(&self) -> Signer {
        Signer::new("hub", self.hub_key.clone())
    }

    pub fn code(&self, tx: TxId, now: u64) -> String {
        qrcash_protocol::CodeToken::issue(&self.hub_key, tx, now + 600)
    }
}

pub fn order(tx: TxId, now: u64) -> DispenseOrder {
    DispenseOrder {
        order_id: OrderId::random(),
        tx_id: tx,
        atm_id: ATM.into(),
        amount: Amount::new(12_000, Currency::JPY),
        notes: vec![
            NoteCount {
                denomination: 10_000,
                count: 1,
            },
            NoteCount {
                denomination: 1_000,
                count: 2,
            },
        ],
        expires_at: now + 120,
    }
}

/// The scripted hub.
pub struct ScriptedHub {
    client: TestClient,
    signer: Signer,
    atm_key: qrcash_protocol::PublicKey,
    seq: u64,
    clock: std::sync::Arc<dyn Clock>,
}

impl ScriptedHub {
    pub async fn connect(rig: &Rig, seq_from: u64) -> ScriptedHub {
        let mut client = TestClient::connect(&rig.hub_broker, "hub").await.unwrap();
        client.subscribe("qrcash/v1/atm/+/up").await;
        ScriptedHub {
            client,
            signer: rig.hub(),
            atm_key: rig.atm_key.public().clone(),
            seq: seq_from,
            clock: std::sync::Arc::new(qrcash_protocol::SystemClock),
        }
    }

    /// Dates the hub's messages by `clock` (tests that move time).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next verified up-link message (heartbeats are acknowledged and skipped).
    pub async fn next_up(&mut self, timeout: Duration) -> Option<Claims<AtmUp>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (topic, bytes) = self.client.next_publish(left).await?;
            assert_eq!(topic, topics::atm_up(ATM));
            let claims: Claims<AtmUp> = Sealed::parse(&bytes, MAX_UPLINK_BYTES)
                .unwrap()
                .open(&self.atm_key)
                .expect("agent messages verify with the ATM key");
            assert_eq!((claims.iss.as_str(), claims.aud.as_str()), (ATM, "hub"));
            if matches!(claims.msg, AtmUp::Heartbeat(_)) {
                self.ack(&claims.jti).await;
                continue;
            }
            return Some(claims);
        }
    }

    pub async fn send(&mut self, msg: AtmDown, re: Option<&str>) -> String {
        self.seq += 1;
        let now = self.clock.now();
        let mut claims = Claims::new("hub", ATM, self.seq, now, Duration::from_secs(300), msg);
        claims.re = re.map(str::to_owned);
        let text = self.signer.seal(&claims);
        self.client
            .publish(&topics::atm_down(ATM), text.into_bytes())
            .await;
        claims.jti
    }

    /// Subscribes to another filter (e.g. presence).
    pub async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter).await;
    }

    /// The next raw message on any subscribed topic.
    pub async fn next_raw(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        self.client.next_publish(timeout).await
    }

    /// Signs what it sends with `key` from now on (the hub rotated its key).
    pub fn sign_with(&mut self, key: PrivateKey) {
        self.signer = Signer::new("hub", key);
    }

    /// Publishes `bytes` as the hub's retained key set.
    pub async fn publish_key_set(&mut self, bytes: Vec<u8>) {
        self.client.publish_retained(topics::HUB_KEYS, bytes).await;
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.client.publish(&topics::atm_down(ATM), bytes).await;
    }

    pub async fn ack(&mut self, jti: &str) {
        self.send(
            AtmDown::Ack(qrcash_protocol::messages::Ack {
                ids: vec![jti.to_owned()],
            }),
            None,
        )
        .await;
    }
}

/// Waits until `pred` holds for an event, or panics after `timeout`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<qrcash_agent::AgentEvent>,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&qrcash_agent::AgentEvent) -> bool,
) -> qrcash_agent::AgentEvent {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if pred(&ev) => return ev,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event channel closed while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} within {timeout:?}"),
        }
    }
}

pub fn write_png(path: &std::path::Path, text: Option<&str>) {
    let img = match text {
        Some(t) => qrcode::QrCode::new(t)
            .unwrap()
            .render::<image::Luma<u8>>()
            .module_dimensions(6, 6)
            .build(),
        None => image::ImageBuffer::from_pixel(200, 200, image::Luma([200u8])),
    };
    let tmp = path.with_extension("tmp.png");
    img.save(&tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn config_file(rig: &Rig) -> std::path::PathBuf {
    let text = format!(
        r#"
atm_id = "{atm}"
key_file = "{key}"
hub_keys = ["{hub}"]
database = "{db}"

[[cassettes]]
denomination = 10000
notes = 100

[[cassettes]]
denomination = 1000
notes = 100

[broker]
url = "{url}"

[camera]
kind = "files"
path = "{png}"
looping = true

[dispenser]
port = "{port}"
model = "lcdm-2000"
journal = "{journal}"

[outbox]
resend_initial_ms = 200
resend_max_ms = 1000

[timing]
min_frame_interval_ms = 50
"#,
        atm = ATM,
        key = rig.path("atm.jwk").display(),
        hub = rig.path("hub.pub.jwk").display(),
        db = rig.path("agent.db").display(),
        url = rig.broker.url(),
        png = rig.path("code.png").display(),
        port = rig.sim.port_path(),
        journal = rig.path("dispenser-journal.json").display(),
    );
    let path = rig.path("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn spawn_agent(config: &std::path::Path, crash_at: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qrcash-agent"));
    cmd.arg("--config").arg(config).arg("run");
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.env_remove(qrcash_agent::runtime::CRASH_ENV);
    if let Some(step) = crash_at {
        cmd.env(qrcash_agent::runtime::CRASH_ENV, step);
    }
    cmd.spawn().expect("qrcash-agent binary")
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not crash in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the real binary with `--config config` and `args`: (success, stdout, stderr).
pub fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qrcash-agent"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("qrcash-agent binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
