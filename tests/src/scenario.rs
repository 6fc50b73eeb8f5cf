//! Fault-injection scenarios: complete withdrawals through the real pieces with one fault
//! injected into each, checked against the money invariants after every scenario.
//!
//! The world is built once per campaign and reused across scenarios: a private Mosquitto
//! (or, with [`BrokerSetup::Nats`], a private cluster of NATS nodes, the hub on the first,
//! the agent on the second and the phone on the last, each failing over to the others),
//! the hub service in-process over a real SQLite file (restartable from disk) or, with
//! [`HubSetup::Instances`], several hub instance processes on one PostgreSQL database of a
//! private server, sharing the load through `$share/hub/` (killed and restarted, the
//! database restarted under them), the agent as
//! a child process (so it can be SIGKILLed and restarted; the binary is
//! `qrcash-fault-campaign agent --config FILE`), the LCDM simulator on a pty with its fault
//! knobs, the reference phone client, and a spy client that captures every sealed message
//! for later replay. Scenario choice comes from a seeded generator, so a failing seed
//! replays the same fault sequence (timing on a busy machine may still differ). This module
//! drives; [`crate::invariants`] judges.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qrcash_hardware::dispenser::sim::{Faults, SimConfig, SimHandle, Simulator};
use qrcash_hub::admin::{self, NewAccount, NewAtm};
use qrcash_hub::config::HubConfig;
use qrcash_hub::handler::Hub;
use qrcash_hub::identity::HashCost;
use qrcash_hub::rng::SeededEntropy;
use qrcash_hub::service::{HubHandle, HubService, ServiceOptions};
use qrcash_hub::store::{Store as HubStore, rows};
use qrcash_hub::testkit::{PIN, SHIBUYA, password, test_config};
use qrcash_hub::warnings::WarningCatalog;
use qrcash_hub::withdrawal::Phase;
use qrcash_io::BrokerConfig;
use qrcash_io::KeyFile;
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings, requests};
use qrcash_protocol::{Amount, Clock, Currency, Position, PrivateKey, Signer, SystemClock, topics};

use crate::broker::Mosquitto;
use crate::instances::{Instances, READY_WITHIN};
use crate::invariants::{self, Deadlines, Drift, MachineView, Verdict};
use crate::mqtt::TestClient;
use crate::nats::NatsCluster;
use crate::postgres::{Postgres, blocking};
use qrcash_protocol::messages::{CountSource, DispenseReport};

/// The ATM under test.
pub const ATM: &str = "atm-fault-1";
/// The account that withdraws.
pub const ACCOUNT: &str = "hanako";
/// Cassette denominations, upper first (matches the agent configuration).
pub const DENOMINATIONS: [u64; 2] = [10_000, 1_000];
/// How long one step may take before the scenario counts as stuck.
const STEP: Duration = Duration::from_secs(30);
/// The hub's confirmation window (short, so a late confirmation costs seconds).
const CONFIRM_TIMEOUT_S: u64 = 6;
/// Notes per cassette in one dispenser batch (the agent's `max_notes_per_batch`): small, so
/// that many withdrawals take several batches and a crash can fall between two.
const BATCH: u64 = 3;

/// Hub kills and database restarts strike within this many milliseconds of the
/// registration: anywhere in a flow, from the registration to the report.
const KILL_WITHIN_MS: u64 = 1_500;
/// The line the campaign writes into the agent's log before each start of the agent.
const AGENT_STARTED: &str = "=== qrcash-fault-campaign: agent started ===";
/// What the agent's link logs when it leaves a broker node for the next.
const MOVING_ON: &str = "moving on to the next broker";
/// Hub instances log `info` from their service (readiness, subscriptions), else warnings.
const INSTANCE_LOG: &str = "warn,qrcash_hub::service=info";

/// The campaign's seeded generator: the hub's, so one seed replays the whole run.
pub use qrcash_hub::rng::SeededEntropy as Rng;

/// The hub's clock: the system clock plus an offset the campaign moves forward at the end
/// (to run the final sweep past every deadline).
#[derive(Debug, Clone, Default)]
pub struct ShiftClock(Arc<AtomicU64>);

impl ShiftClock {
    /// Moves the clock forward.
    pub fn shift(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }
}

impl Clock for ShiftClock {
    fn now(&self) -> u64 {
        SystemClock.now() + self.0.load(Ordering::SeqCst)
    }
}

/// A dispenser fault from the simulator's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFault {
    /// A note jams after this many notes.
    Jam(u32),
    /// The cassette fails to pick after this many notes.
    PickupError(u32),
    /// The cassette reports bill end after this many notes.
    BillEnd(u32),
    /// The device stops answering altogether.
    NoAnswer,
    /// The device loses power with a note in the path after this many notes.
    PowerLoss(u32),
}

/// Where an agent crash hook aborts the process: every step of the dispense sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashStep {
    /// The order is verified, nothing journalled: the order is lost with the process.
    BeforeWriteAhead,
    /// After the write-ahead record, before the dispenser is touched.
    AfterWriteAhead,
    /// The first batch's command frame is on the serial line; its answer is not yet read
    /// (the device executes it and answers with nobody listening).
    AfterCommand,
    /// A batch was answered and recorded by the driver; the next one was not sent.
    BetweenBatches,
    /// After the dispenser answered, before the outcome is recorded.
    AfterDeviceOutcome,
    /// Outcome and report committed, the report not yet sent.
    AfterReportQueued,
}

impl CrashStep {
    /// Every step, in the order of a dispense.
    pub const ALL: [CrashStep; 6] = [
        CrashStep::BeforeWriteAhead,
        CrashStep::AfterWriteAhead,
        CrashStep::AfterCommand,
        CrashStep::BetweenBatches,
        CrashStep::AfterDeviceOutcome,
        CrashStep::AfterReportQueued,
    ];

    fn env_value(self) -> &'static str {
        match self {
            CrashStep::BeforeWriteAhead => "before_write_ahead",
            CrashStep::AfterWriteAhead => "after_write_ahead",
            CrashStep::AfterCommand => "after_command",
            CrashStep::BetweenBatches => "between_batches",
            CrashStep::AfterDeviceOutcome => "after_device_outcome",
            CrashStep::AfterReportQueued => "after_report_queued",
        }
    }

    /// Whether only a dispense of more than one batch reaches this step.
    fn needs_batches(self) -> bool {
        self == CrashStep::BetweenBatches
    }
}

/// The fault injected into one withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: the baseline flow must complete in full.
    None,
    /// A dispenser fault during the payout.
    Device(DeviceFault),
    /// The agent aborts itself at a step of the dispense sequence and is restarted.
    Crash(CrashStep),
    /// The agent is SIGKILLed this many milliseconds after the phone confirmed, then restarted.
    Kill {
        /// Delay after the confirmation.
        after_ms: u64,
    },
    /// The agent is SIGKILLed this many milliseconds after its dispense order passed on the
    /// broker (mid-dispense, usually), then restarted.
    KillAtOrder {
        /// Delay after the order was seen.
        after_ms: u64,
    },
    /// The broker is killed and restarted (same port) this long after the confirmation.
    BrokerOutage {
        /// Delay after the confirmation before the broker dies.
        after_ms: u64,
        /// How long it stays down.
        down_ms: u64,
    },
    /// The broker node the agent is connected to is SIGKILLed this long after the
    /// confirmation and started again `down_ms` after the agent moved to another node.
    /// Clustered broker only (it takes the place of [`Fault::BrokerOutage`]).
    BrokerNodeKill {
        /// Delay after the confirmation before the node dies.
        after_ms: u64,
        /// How long it stays down once the agent left it.
        down_ms: u64,
    },
    /// The hub service is restarted from its database (after presentation or confirmation);
    /// with several instances, every one of them (SIGTERM, then started again).
    HubRestart {
        /// Restart after the confirmation (`true`) or before it (`false`).
        after_confirm: bool,
    },
    /// One hub instance is SIGKILLed this long after the withdrawal began (at any step:
    /// before a commit, between a commit and its publish, while idle) and started again at
    /// once. Several instances only.
    HubKill {
        /// Which instance.
        instance: usize,
        /// Delay after the registration was sent.
        after_ms: u64,
    },
    /// PostgreSQL is stopped (every connection cut, transactions in flight rolled back) this
    /// long after the withdrawal began, and started again. Several instances only.
    DatabaseRestart {
        /// Delay after the registration was sent.
        after_ms: u64,
    },
    /// After the flow, captured sealed messages (this scenario's and `older` earlier ones)
    /// are published again: replays and long-delayed duplicates.
    Replay {
        /// How many earlier captured messages to add.
        older: u8,
    },
    /// The phone confirms twice.
    ConfirmTwice,
    /// The phone confirms after the hub's deadline.
    LateConfirm,
}

impl Fault {
    /// A short name for tallies.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Device(DeviceFault::Jam(_)) => "device-jam",
            Fault::Device(DeviceFault::PickupError(_)) => "device-pickup-error",
            Fault::Device(DeviceFault::BillEnd(_)) => "device-bill-end",
            Fault::Device(DeviceFault::NoAnswer) => "device-no-answer",
            Fault::Device(DeviceFault::PowerLoss(_)) => "device-power-loss",
            Fault::Crash(CrashStep::BeforeWriteAhead) => "crash-before-write-ahead",
            Fault::Crash(CrashStep::AfterWriteAhead) => "crash-after-write-ahead",
            Fault::Crash(CrashStep::AfterCommand) => "crash-after-command",
            Fault::Crash(CrashStep::BetweenBatches) => "crash-between-batches",
            Fault::Crash(CrashStep::AfterDeviceOutcome) => "crash-after-device-outcome",
            Fault::Crash(CrashStep::AfterReportQueued) => "crash-after-report-queued",
            Fault::Kill { .. } => "sigkill-agent",
            Fault::KillAtOrder { .. } => "sigkill-agent-mid-dispense",
            Fault::BrokerOutage { .. } => "broker-restart",
            Fault::BrokerNodeKill { .. } => "broker-node-kill",
            Fault::HubRestart { .. } => "hub-restart",
            Fault::HubKill { .. } => "sigkill-hub-instance",
            Fault::DatabaseRestart { .. } => "database-restart",
            Fault::Replay { .. } => "replay-duplicates",
            Fault::ConfirmTwice => "confirm-twice",
            Fault::LateConfirm => "late-confirm",
        }
    }

    /// One of every kind the hub and broker setups allow, in a fixed order (the default suite
    /// runs these first).
    pub fn every_kind(rng: &mut Rng, hubs: HubSetup, broker: BrokerSetup) -> Vec<Fault> {
        let mut all = vec![
            Fault::None,
            Fault::Device(DeviceFault::Jam(rng.below(3) as u32)),
            Fault::Device(DeviceFault::PickupError(rng.below(3) as u32)),
            Fault::Device(DeviceFault::BillEnd(rng.below(3) as u32)),
            Fault::Device(DeviceFault::NoAnswer),
            Fault::Device(DeviceFault::PowerLoss(rng.below(3) as u32)),
            Fault::Crash(CrashStep::BeforeWriteAhead),
            Fault::Crash(CrashStep::AfterWriteAhead),
            Fault::Crash(CrashStep::AfterCommand),
            Fault::Crash(CrashStep::BetweenBatches),
            Fault::Crash(CrashStep::AfterDeviceOutcome),
            Fault::Crash(CrashStep::AfterReportQueued),
            Fault::Kill {
                after_ms: rng.below(300),
            },
            Fault::KillAtOrder {
                after_ms: rng.below(30),
            },
            broker.outage(rng.below(200), 200 + rng.below(800)),
            Fault::HubRestart {
                after_confirm: false,
            },
            Fault::HubRestart {
                after_confirm: true,
            },
            Fault::Replay { older: 5 },
            Fault::ConfirmTwice,
            Fault::LateConfirm,
        ];
        if let HubSetup::Instances(n) = hubs {
            all.push(Fault::HubKill {
                instance: rng.below(n as u64) as usize,
                after_ms: rng.below(KILL_WITHIN_MS),
            });
            all.push(Fault::DatabaseRestart {
                after_ms: rng.below(KILL_WITHIN_MS),
            });
        }
        // Shuffle so that each kind follows a different predecessor from seed to seed.
        for i in (1..all.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            all.swap(i, j);
        }
        all
    }

    /// A random fault (the baseline and replays weighted up: they are cheap). With several
    /// hub instances, one in five kills an instance or restarts the database.
    pub fn random(rng: &mut Rng, hubs: HubSetup, broker: BrokerSetup) -> Fault {
        if let HubSetup::Instances(instances) = hubs
            && rng.below(5) == 0
        {
            let after_ms = rng.below(KILL_WITHIN_MS);
            return if rng.below(3) == 0 {
                Fault::DatabaseRestart { after_ms }
            } else {
                Fault::HubKill {
                    instance: rng.below(instances as u64) as usize,
                    after_ms,
                }
            };
        }
        let n = rng.below(3) as u32;
        match rng.below(20) {
            0..=2 => Fault::None,
            3 => Fault::Device(DeviceFault::Jam(n)),
            4 => Fault::Device(DeviceFault::PickupError(n)),
            5 => Fault::Device(DeviceFault::BillEnd(n)),
            6 => Fault::Device(DeviceFault::NoAnswer),
            7 => Fault::Device(DeviceFault::PowerLoss(n)),
            8 | 9 => Fault::Crash(CrashStep::ALL[rng.below(CrashStep::ALL.len() as u64) as usize]),
            10 => Fault::Kill {
                after_ms: rng.below(400),
            },
            11 => Fault::KillAtOrder {
                after_ms: rng.below(40),
            },
            12 | 13 => broker.outage(rng.below(300), 100 + rng.below(1_500)),
            14 => Fault::HubRestart {
                after_confirm: rng.below(2) == 0,
            },
            15 | 16 => Fault::Replay {
                older: rng.below(8) as u8,
            },
            17 | 18 => Fault::ConfirmTwice,
            _ => Fault::LateConfirm,
        }
    }
}

/// How one scenario ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The fault injected.
    pub fault: Fault,
    /// The amount asked for.
    pub amount: u64,
    /// The hub's phase for the transaction at the end (`lost-order` when the order never
    /// reached the agent's journal and waits for the hub's report grace).
    pub phase: String,
    /// Wall time of the scenario.
    pub took: Duration,
    /// What the invariant checker said afterwards.
    pub verdict: Verdict,
    /// Stranded orders a replay made the hub resend and the ATM refused (their holds
    /// released: `Ordered → Failed`).
    pub resent_and_refused: usize,
}

/// Campaign settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The seed of every random choice.
    pub seed: u64,
    /// The executable that runs the agent (`qrcash-fault-campaign`).
    pub agent_exe: PathBuf,
    /// Print one line per scenario to stderr.
    pub verbose: bool,
    /// Where the hub runs.
    pub hubs: HubSetup,
    /// What the broker is.
    pub broker: BrokerSetup,
}

/// What a campaign's broker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerSetup {
    /// One private Mosquitto (restarted whole by [`Fault::BrokerOutage`]).
    #[default]
    Mosquitto,
    /// A private cluster of this many NATS nodes with MQTT listeners (nodes killed one at a
    /// time by [`Fault::BrokerNodeKill`]). NATS does not implement `$share`: one hub only.
    Nats(usize),
}

impl BrokerSetup {
    /// The broker fault of this setup: the whole broker restarted, or the agent's node killed.
    fn outage(self, after_ms: u64, down_ms: u64) -> Fault {
        match self {
            BrokerSetup::Mosquitto => Fault::BrokerOutage { after_ms, down_ms },
            BrokerSetup::Nats(_) => Fault::BrokerNodeKill { after_ms, down_ms },
        }
    }
}

/// The running broker.
enum Broker {
    Mosquitto(Mosquitto),
    /// The hub and the spy on node 0 (never killed), the agent starting on node 1 and failing
    /// over among the others, the phone starting on the last.
    Nats(NatsCluster),
}

impl Broker {
    async fn start(setup: BrokerSetup) -> Result<Broker, Failure> {
        Ok(match setup {
            BrokerSetup::Mosquitto => Broker::Mosquitto(Mosquitto::start()),
            BrokerSetup::Nats(n) if n >= 3 => Broker::Nats(NatsCluster::start(n).await),
            BrokerSetup::Nats(n) => {
                return Err(format!(
                    "a NATS cluster of {n} nodes cannot lose one (JetStream needs a majority \
                     of three or more)"
                ));
            }
        })
    }

    /// The hub's (and the spy's) settings.
    fn hub(&self) -> BrokerConfig {
        match self {
            Broker::Mosquitto(m) => BrokerConfig::plain(m.url()),
            Broker::Nats(c) => c.config(0),
        }
    }

    /// The agent's settings: on NATS every node but the hub's, from node 1 on.
    fn agent(&self) -> BrokerConfig {
        match self {
            Broker::Mosquitto(m) => BrokerConfig::plain(m.url()),
            Broker::Nats(c) => BrokerConfig {
                url: c.url(1),
                failover_urls: (2..c.len()).map(|i| c.url(i)).collect(),
                ..BrokerConfig::default()
            },
        }
    }

    /// The phone's settings.
    fn phone(&self) -> BrokerConfig {
        match self {
            Broker::Mosquitto(m) => BrokerConfig::plain(m.url()),
            Broker::Nats(c) => c.config(c.len() - 1),
        }
    }

    /// The spy's: held to the hub's node, which no fault kills.
    fn spy(&self) -> BrokerConfig {
        match self {
            Broker::Mosquitto(m) => BrokerConfig::plain(m.url()),
            Broker::Nats(c) => BrokerConfig::plain(c.url(0)),
        }
    }
}

/// Where a campaign's hub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HubSetup {
    /// One hub service in the campaign's process on a SQLite file (the embedded default).
    #[default]
    Embedded,
    /// This many hub instance processes (`qrcash-fault-campaign hub`) on one PostgreSQL
    /// database of a private server, subscribed through `$share/hub/`.
    Instances(usize),
}

/// The hub's database as the campaign opens it.
#[derive(Debug, Clone)]
enum HubDb {
    Sqlite(PathBuf),
    Postgres(String),
}

impl HubDb {
    fn open(&self) -> Result<HubStore, String> {
        match self {
            HubDb::Sqlite(path) => HubStore::open(path),
            HubDb::Postgres(url) => HubStore::open_postgres(url),
        }
        .map_err(|e| e.to_string())
    }

    /// `f` on a store opened now, on a thread of its own (the PostgreSQL client blocks on a
    /// runtime of its own); tried again while the database cannot answer (it is restarting),
    /// for up to [`STEP`].
    fn read<T: Send>(
        &self,
        f: impl Fn(&HubStore) -> Result<T, String> + Sync,
    ) -> Result<T, Failure> {
        blocking(|| {
            let deadline = Instant::now() + STEP;
            loop {
                match self.open().and_then(|store| f(&store)) {
                    Ok(t) => return Ok(t),
                    Err(e) if Instant::now() >= deadline => return Err(fail("hub database", e)),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
    }

    /// `f` on a store opened now, once (a write is never repeated blindly).
    fn write<T: Send>(
        &self,
        f: impl FnOnce(HubStore) -> Result<T, String> + Send,
    ) -> Result<T, Failure> {
        blocking(|| f(self.open()?))
    }
}

/// Hub instances on PostgreSQL.
struct Cluster {
    /// The private server (restarted by [`Fault::DatabaseRestart`]).
    pg: Arc<Postgres>,
    /// The instance processes (killed from a task of their own by [`Fault::HubKill`]).
    instances: Arc<Mutex<Instances>>,
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Instances> {
        // A panic while holding it cannot leave the process table half changed.
        self.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_all(&self) -> Result<(), Failure> {
        let mut instances = self.lock();
        (0..instances.len()).try_for_each(|i| instances.spawn(i))
    }

    /// Waits until every instance is ready since its latest start and, when `subscribed` is
    /// given (counts per instance), subscribed again since.
    async fn wait_ready(&self, subscribed: Option<&[usize]>) -> Result<(), Failure> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let waiting = {
                let instances = self.lock();
                (0..instances.len()).find(|&i| {
                    !instances.ready(i)
                        || subscribed.is_some_and(|s| instances.subscriptions(i) <= s[i])
                })
            };
            let Some(i) = waiting else { return Ok(()) };
            if Instant::now() > deadline {
                return Err(format!(
                    "hub instance {i} is not ready:\n{}",
                    self.lock().log(i)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn subscriptions(&self) -> Vec<usize> {
        let instances = self.lock();
        (0..instances.len())
            .map(|i| instances.subscriptions(i))
            .collect()
    }
}

/// A fault striking on a timer while the withdrawal runs, from a task of its own.
type Strike = tokio::task::JoinHandle<Result<(), Failure>>;

/// Everything running.
pub struct World {
    settings: Settings,
    rng: Rng,
    broker: Broker,
    dir: tempfile::TempDir,
    clock: ShiftClock,
    hub_key: PrivateKey,
    hub_config: HubConfig,
    /// The hub's database.
    hub_db: HubDb,
    /// The in-process hub service ([`HubSetup::Embedded`]).
    hub: Option<HubHandle>,
    /// The hub instances ([`HubSetup::Instances`]).
    cluster: Option<Cluster>,
    sim: SimHandle,
    agent: Option<Child>,
    phone: PhoneClient,
    spy: Option<TestClient>,
    /// Every sealed message seen on the broker (topic, payload), presence excluded.
    captured: Vec<(String, Vec<u8>)>,
    /// The agent's presence as last seen.
    presence: Option<String>,
    /// The amount of the last withdrawal paid out in full: crash scenarios repeat it, so
    /// that the driver's last record is of an order with the very same notes.
    last_paid: Option<u64>,
    /// Transactions whose order never reached the agent's journal (`lost-order`).
    lost_orders: Vec<String>,
    /// The totals' discrepancies already reported (each is reported once).
    drift: Drift,
    /// Violations already reported (each is reported once, at the scenario that caused it).
    reported: std::collections::BTreeSet<String>,
}

/// A failure to run a scenario at all (distinct from an invariant violation).
pub type Failure = String;

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    format!("{what}: {e}")
}

fn write_png(path: &Path, text: Option<&str>) -> Result<(), Failure> {
    let img = match text {
        Some(t) => qrcode::QrCode::new(t)
            .map_err(|e| fail("encoding the code", e))?
            .render::<image::Luma<u8>>()
            .module_dimensions(4, 4)
            .build(),
        None => image::ImageBuffer::from_pixel(120, 120, image::Luma([200u8])),
    };
    let tmp = path.with_extension("tmp.png");
    img.save(&tmp)
        .map_err(|e| fail("writing the camera image", e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("replacing the camera image", e))
}

impl World {
    /// Builds the world: broker, hub with one account and this ATM, simulator, agent, phone.
    pub async fn start(settings: Settings) -> Result<World, Failure> {
        let mut rng = Rng::new(settings.seed);
        if let (HubSetup::Instances(_), BrokerSetup::Nats(_)) = (settings.hubs, settings.broker) {
            return Err(
                "hub instances share the load through `$share/hub/`, which NATS does not \
                 implement: run them on Mosquitto"
                    .into(),
            );
        }
        let broker = Broker::start(settings.broker).await?;
        // `QRCASH_FAULT_KEEP=1` keeps the world's folder (databases, agent log, configs) for
        // a look after a failing seed.
        let keep = std::env::var_os("QRCASH_FAULT_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("qrcash-fault-")
            .disable_cleanup(keep)
            .tempdir()
            .map_err(|e| fail("temporary folder", e))?;
        if keep {
            eprintln!("fault campaign: world kept in {}", dir.path().display());
        }
        let clock = ShiftClock::default();
        let hub_key = PrivateKey::generate();
        let mut hub_config = test_config();
        hub_config.withdrawal.qr_images = false;
        hub_config.withdrawal.daily = u64::MAX / 4;
        hub_config.withdrawal.confirm_timeout_s = CONFIRM_TIMEOUT_S;

        // The hub's database: an account with plenty of money and this ATM.
        let (hub_db, pg) = match settings.hubs {
            HubSetup::Embedded => (HubDb::Sqlite(dir.path().join("hub.sqlite")), None),
            HubSetup::Instances(_) => {
                // A server of the campaign's own: it is restarted under the instances.
                let pg = blocking(Postgres::private);
                (HubDb::Postgres(pg.database()), Some(pg))
            }
        };
        let atm_key = PrivateKey::generate();
        let now = clock.now();
        hub_db.write(|mut store| {
            admin::create_account(
                &mut store,
                &NewAccount {
                    id: ACCOUNT.into(),
                    currency: Currency::JPY,
                    password: password(ACCOUNT),
                    pin: PIN.into(),
                    opening_balance: 1_000_000_000_000,
                },
                HashCost::TEST,
                now,
            )
            .map_err(|e| fail("account", e))?;
            admin::enroll_atm(
                &mut store,
                &NewAtm {
                    id: ATM.into(),
                    public_key: atm_key.public().to_jwk(),
                    name: "Fault ATM".into(),
                    address: "2-24-1 Shibuya, Tokyo".into(),
                    position: Position::new(SHIBUYA.0, SHIBUYA.1, 0.0),
                    denominations: DENOMINATIONS.to_vec(),
                },
                now,
            )
            .map_err(|e| fail("ATM", e))?;
            Ok(())
        })?;
        atm_key
            .save(&dir.path().join("atm.jwk"))
            .map_err(|e| fail("ATM key", e))?;
        let hub_pub =
            serde_json::to_string(&hub_key.public().to_jwk()).map_err(|e| fail("hub key", e))?;
        std::fs::write(dir.path().join("hub.pub.jwk"), hub_pub).map_err(|e| fail("hub key", e))?;

        let sim = Simulator::spawn(SimConfig {
            note_interval: Duration::from_millis(2),
            ..SimConfig::lcdm2000(1_000_000, 1_000_000)
        })
        .map_err(|e| fail("simulator", e))?;
        let png = dir.path().join("code.png");
        write_png(&png, None)?;
        write_agent_config(dir.path(), &broker.agent(), sim.port_path())?;

        let cluster = match (pg, &hub_db) {
            (Some(pg), HubDb::Postgres(url)) => Some(Cluster {
                pg: Arc::new(pg),
                instances: Arc::new(Mutex::new(instance_configs(
                    &settings,
                    dir.path(),
                    &hub_config,
                    &hub_key,
                    &broker.hub().url,
                    url,
                )?)),
            }),
            _ => None,
        };
        let mut phone_settings = PhoneSettings::new("hanako-phone", broker.phone());
        if cluster.is_some() || matches!(broker, Broker::Nats(_)) {
            // An instance killed before its commit, or the phone's broker node killed before
            // forwarding, loses the message: the phone's outbox sends it again well within
            // the confirmation window.
            phone_settings.resend_after = Duration::from_secs(1);
        }
        let phone = PhoneClient::connect(
            phone_settings,
            PrivateKey::generate(),
            hub_key.public().clone(),
            DeviceStore::in_memory(),
            Arc::new(clock.clone()),
        )
        .await
        .map_err(|e| fail("phone", e))?;
        let mut world = World {
            settings,
            rng: Rng::new(rng.next_u64()),
            broker,
            dir,
            clock,
            hub_key,
            hub_config,
            hub_db,
            hub: None,
            cluster,
            sim,
            agent: None,
            phone,
            spy: None,
            captured: Vec::new(),
            presence: None,
            last_paid: None,
            lost_orders: Vec::new(),
            drift: Drift::default(),
            reported: std::collections::BTreeSet::new(),
        };
        world.connect_spy().await?;
        world.start_hub().await?;
        world.spawn_agent(None).await?;
        let here = Position::new(SHIBUYA.0, SHIBUYA.1, 10.0);
        let login = world
            .phone
            .login(ACCOUNT, &password(ACCOUNT), Some(here), STEP)
            .await
            .map_err(|e| fail("phone login", e))?;
        if let Some(r) = login.restriction {
            return Err(format!("the test phone is restricted: {r:?}"));
        }
        Ok(world)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The rng (scenario choice).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    async fn connect_spy(&mut self) -> Result<(), Failure> {
        let mut spy = TestClient::connect(&self.broker.spy(), "fault-spy")
            .await
            .map_err(|e| fail("spy client", e))?;
        spy.subscribe(&format!("{}/#", topics::ROOT)).await;
        self.spy = Some(spy);
        self.presence = None;
        Ok(())
    }

    /// Moves what the spy saw into `captured`; returns once `until` holds for the agent's
    /// presence or `timeout` passes (then `false`).
    async fn pump_spy(&mut self, timeout: Duration, until: impl Fn(Option<&str>) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let presence_topic = topics::atm_presence(ATM);
        loop {
            if until(self.presence.as_deref()) {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(spy) = self.spy.as_mut() else {
                return false;
            };
            match spy.next_publish(left).await {
                Some((topic, payload)) if topic == presence_topic => {
                    self.presence = Some(String::from_utf8_lossy(&payload).into_owned());
                }
                Some(m) => self.captured.push(m),
                None => return until(self.presence.as_deref()),
            }
        }
    }

    fn hub_options(&self) -> ServiceOptions {
        ServiceOptions {
            broker: self.broker.hub(),
            client_id: "hub".into(),
            shared_subscription: false,
            group_commit_max: 64,
            sweep_interval: Duration::from_secs(1),
        }
    }

    async fn start_hub(&mut self) -> Result<(), Failure> {
        if let Some(cluster) = &self.cluster {
            cluster.start_all()?;
            return cluster.wait_ready(None).await;
        }
        let store = self.hub_db.open().map_err(|e| fail("hub store", e))?;
        let hub = make_hub(
            store,
            &self.hub_config,
            &self.hub_key,
            &self.clock,
            self.rng.next_u64(),
        )?;
        let handle = HubService::start(hub, self.hub_options())
            .await
            .map_err(|e| fail("hub service", e))?;
        if !handle.wait_ready(STEP).await {
            return Err("the hub did not subscribe".into());
        }
        self.hub = Some(handle);
        Ok(())
    }

    /// Stops the hub service (every instance) and starts it again from the database.
    async fn restart_hub(&mut self) -> Result<(), Failure> {
        if let Some(h) = self.hub.take() {
            drop(h.shutdown().await);
        }
        if let Some(cluster) = &self.cluster {
            cluster.lock().stop_all();
        }
        self.start_hub().await
    }

    /// Starts the timer of a fault that strikes on its own while the flow runs.
    fn strike(&self, fault: Fault) -> Option<Strike> {
        let cluster = self.cluster.as_ref()?;
        match fault {
            Fault::HubKill { instance, after_ms } => {
                let instances = cluster.instances.clone();
                Some(tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_millis(after_ms));
                    instances
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .kill_and_restart(instance)
                }))
            }
            Fault::DatabaseRestart { after_ms } => {
                let pg = cluster.pg.clone();
                Some(tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_millis(after_ms));
                    pg.restart();
                    Ok(())
                }))
            }
            _ => None,
        }
    }

    async fn spawn_agent(&mut self, crash: Option<CrashStep>) -> Result<(), Failure> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .map_err(|e| fail("agent log", e))?;
        // Where this run of the agent starts in the log: [`World::agent_node`] reads on.
        std::io::Write::write_all(&mut log, format!("{AGENT_STARTED}\n").as_bytes())
            .map_err(|e| fail("agent log", e))?;
        let mut cmd = Command::new(&self.settings.agent_exe);
        cmd.arg("agent")
            .arg("--config")
            .arg(self.path("agent.toml"))
            // The link's `info` says when it moves on to another broker node.
            .env("RUST_LOG", "warn,qrcash_io::link=info")
            .env_remove(qrcash_agent::runtime::CRASH_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(step) = crash {
            cmd.env(qrcash_agent::runtime::CRASH_ENV, step.env_value());
        }
        let child = cmd
            .spawn()
            .map_err(|e| fail(&format!("running {}", self.settings.agent_exe.display()), e))?;
        self.agent = Some(child);
        if !self.pump_spy(STEP / 2, |p| p == Some("online")).await {
            // Seen once on NATS: the hub on the spy's node got the agent's `online` and the
            // spy did not. A fresh subscription gets the retained presence again; the line
            // says it happened (the campaign's log counts it).
            eprintln!(
                "fault campaign: the spy missed the agent's online presence: subscribing again"
            );
            self.connect_spy().await?;
            if !self.pump_spy(STEP / 2, |p| p == Some("online")).await {
                return Err("the agent did not come online".into());
            }
        }
        Ok(())
    }

    /// SIGKILLs the agent (if running) and waits until the broker announced it offline.
    async fn kill_agent(&mut self) -> Result<(), Failure> {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.pump_spy(STEP, |p| p != Some("online")).await {
            return Err("the agent's last will never came".into());
        }
        Ok(())
    }

    /// Waits until the agent process ended on its own (a crash hook).
    async fn wait_agent_exit(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + STEP;
        loop {
            let done = match self.agent.as_mut() {
                Some(c) => c
                    .try_wait()
                    .map_err(|e| fail("agent process", e))?
                    .is_some(),
                None => true,
            };
            if done {
                self.agent = None;
                return self.kill_agent().await;
            }
            if Instant::now() > deadline {
                return Err("the crash hook never fired".into());
            }
            // Child exit has no async notification here; the spy's queue is pumped meanwhile.
            self.pump_spy(Duration::from_millis(20), |_| false).await;
        }
    }

    /// The NATS node the agent uses now: the last one its link moved on to since it started
    /// (its log says), else the first of its configuration.
    fn agent_node(&self) -> Result<usize, Failure> {
        let Broker::Nats(cluster) = &self.broker else {
            return Err("not a clustered broker".into());
        };
        let log =
            std::fs::read_to_string(self.path("agent.log")).map_err(|e| fail("agent log", e))?;
        let run = log.rsplit(AGENT_STARTED).next().unwrap_or_default();
        let url = run
            .lines()
            .rev()
            .filter(|line| line.contains(MOVING_ON))
            .find_map(|line| {
                let url = line.split("broker=").nth(1)?.split_whitespace().next()?;
                Some(
                    url.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .to_owned(),
                )
            })
            .unwrap_or_else(|| self.broker.agent().url);
        cluster
            .node_at(&url)
            .ok_or_else(|| format!("the agent's log names a broker {url} of no node"))
    }

    /// Kills the NATS node the agent is connected to, waits until the agent moved to another
    /// node and came online there, leaves the node down for `down`, then starts it again and
    /// waits until it serves the cluster.
    async fn broker_node_kill(&mut self, down: Duration) -> Result<(), Failure> {
        let node = self.agent_node()?;
        let Broker::Nats(cluster) = &mut self.broker else {
            return Err("not a clustered broker".into());
        };
        cluster.kill(node);
        let deadline = Instant::now() + STEP;
        while self.agent_node()? == node {
            if Instant::now() > deadline {
                return Err(format!(
                    "the agent did not leave the killed broker node {node}"
                ));
            }
            self.pump_spy(Duration::from_millis(50), |_| false).await;
        }
        // Its node's death published no last will: the presence stays `online`, and the
        // agent announces it again on the new node.
        tokio::time::sleep(down).await;
        let Broker::Nats(cluster) = &mut self.broker else {
            return Err("not a clustered broker".into());
        };
        cluster.restart(node).await
    }

    async fn broker_outage(&mut self, down: Duration) -> Result<(), Failure> {
        let Broker::Mosquitto(mosquitto) = &mut self.broker else {
            return Err("a clustered broker is not restarted whole".into());
        };
        let subscribed = self.cluster.as_ref().map(Cluster::subscriptions);
        self.spy = None;
        mosquitto.stop();
        tokio::time::sleep(down).await;
        mosquitto.start_again();
        self.connect_spy().await?;
        if !self.pump_spy(STEP, |p| p == Some("online")).await {
            return Err("the agent did not reconnect after the broker restart".into());
        }
        // Phone requests published while the hub is not subscribed are lost (clean session,
        // no phone outbox): the next scenario starts once the hub is back.
        if let Some(h) = &self.hub
            && !h.wait_ready(STEP).await
        {
            return Err("the hub did not reconnect after the broker restart".into());
        }
        if let (Some(cluster), Some(before)) = (&self.cluster, subscribed) {
            cluster.wait_ready(Some(&before)).await?;
        }
        Ok(())
    }

    fn machine(&self) -> MachineView {
        MachineView::from_counts(&self.sim.counters().delivered_per_cassette, &DENOMINATIONS)
    }

    fn hub_phase(&self, tx: &str) -> Result<Option<String>, Failure> {
        let id: qrcash_protocol::TxId = tx.parse().map_err(|e| fail("transaction id", e))?;
        self.hub_db.read(|store| {
            rows::withdrawal(store.db(), &id)
                .map(|w| w.map(|w| w.phase.as_str().to_owned()))
                .map_err(|e| e.to_string())
        })
    }

    /// The hub's side, read for the invariants.
    fn read_hub(&self) -> Result<invariants::HubView, Failure> {
        self.hub_db
            .read(|store| invariants::read_hub_store(store).map_err(|e| e.to_string()))
    }

    fn agent_has_order_for(&self, tx: &str) -> Result<bool, Failure> {
        let view = invariants::read_agent(&self.path("agent.db")).map_err(|e| e.to_string())?;
        Ok(view.orders.iter().any(|o| o.order.tx_id.to_string() == tx))
    }

    /// Waits until the hub settled `tx` (final or in doubt), woken by the phone's pushes.
    async fn wait_settled(
        &mut self,
        tx: &str,
        within: Duration,
    ) -> Result<Option<String>, Failure> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = self.hub_phase(tx)?
                && !matches!(p.as_str(), "registered" | "presented" | "ordered")
            {
                return Ok(Some(p));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            // A receipt (or any push) is the usual wake-up; the short timeout covers pushes
            // lost while the broker was down.
            let _ = self
                .phone
                .await_receipt(tx, None, Duration::from_millis(200))
                .await;
            self.pump_spy(Duration::ZERO, |_| false).await;
        }
    }

    /// Waits until the spy saw the hub's dispense order for `tx` on the ATM's down topic.
    async fn wait_order_on_wire(&mut self, tx: &str) -> bool {
        let down = topics::atm_down(ATM);
        let key = self.hub_key.public().clone();
        let mut seen = self.captured.len();
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            for (topic, payload) in &self.captured[seen..] {
                if *topic != down {
                    continue;
                }
                let claims =
                    qrcash_protocol::Sealed::parse(payload, qrcash_protocol::MAX_DOWNLINK_BYTES)
                        .and_then(|s| s.open::<qrcash_protocol::AtmDown>(&key));
                if let Ok(c) = claims
                    && let qrcash_protocol::AtmDown::DispenseOrder(o) = &c.msg
                    && o.tx_id.to_string() == tx
                {
                    return true;
                }
            }
            seen = self.captured.len();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // One more message, or the deadline.
            self.pump_spy_one(left).await;
        }
    }

    /// Moves at most one message from the spy into `captured` (or the presence).
    async fn pump_spy_one(&mut self, timeout: Duration) {
        let presence_topic = topics::atm_presence(ATM);
        let Some(spy) = self.spy.as_mut() else {
            return;
        };
        match spy.next_publish(timeout).await {
            Some((topic, payload)) if topic == presence_topic => {
                self.presence = Some(String::from_utf8_lossy(&payload).into_owned());
            }
            Some(m) => self.captured.push(m),
            None => {}
        }
    }

    /// Waits until the agent's outbox holds nothing but heartbeats, and stays so while the
    /// broker carries no message for a moment: an answer still in flight (a hub resending an
    /// order in a fresh envelope after a replay, say) would queue another report. A report
    /// queued again right after that moment (with several instances, one of them may resend
    /// the order on the agent's `online` after another applied its report, and the agent
    /// answers the repeat with its stored report) is waited out too, twice at most.
    async fn wait_drained(&mut self) -> Result<bool, Failure> {
        for _ in 0..2 {
            if !self.wait_drained_once().await? {
                return Ok(false);
            }
            let view = invariants::read_agent(&self.path("agent.db")).map_err(|e| e.to_string())?;
            if view.outbox_pending.is_empty() {
                return Ok(true);
            }
        }
        self.wait_drained_once().await
    }

    async fn wait_drained_once(&mut self) -> Result<bool, Failure> {
        const QUIET: Duration = Duration::from_millis(300);
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let view = invariants::read_agent(&self.path("agent.db")).map_err(|e| e.to_string())?;
            if view.outbox_pending.is_empty() {
                let seen = self.captured.len();
                self.pump_spy(QUIET, |_| false).await;
                let view =
                    invariants::read_agent(&self.path("agent.db")).map_err(|e| e.to_string())?;
                if self.captured.len() == seen && view.outbox_pending.is_empty() {
                    return Ok(true);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(view.outbox_pending.is_empty());
                }
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            // Acks travel on the ATM's down topic: the spy sees them pass.
            self.pump_spy(Duration::from_millis(100), |_| false).await;
        }
    }

    /// Checks every invariant now and returns what was not reported before: a violation is
    /// reported once, at the scenario that caused it, and later scenarios are judged on
    /// what they change.
    pub fn check(&mut self, drained: bool, deadlines: Deadlines) -> Result<Verdict, Failure> {
        // The agent first, right after its outbox was seen drained: whatever it reported by
        // then the hub had applied before acknowledging it.
        let agent = invariants::read_agent(&self.path("agent.db")).map_err(|e| e.to_string())?;
        let hub = self.read_hub()?;
        let mut v =
            invariants::check_carried(&hub, &agent, self.machine(), drained, deadlines, self.drift);
        self.drift = v.drift;
        v.violations
            .retain(|line| self.reported.insert(line.clone()));
        Ok(v)
    }

    /// The amount of this scenario's withdrawal: for a crash, the last amount paid out in
    /// full (the same notes around the crash, the case that once misattributed counts),
    /// else a repeat half of the time; always one that reaches the crash step.
    fn pick_amount(&mut self, fault: Fault) -> u64 {
        let reaches = |amount: u64| {
            let k = amount / 1_000;
            match fault {
                Fault::Crash(step) if step.needs_batches() => k % 10 > BATCH || k / 10 > BATCH,
                _ => true,
            }
        };
        let repeat = matches!(fault, Fault::Crash(_)) || self.rng.below(2) == 0;
        if repeat && let Some(amount) = self.last_paid.filter(|a| reaches(*a)) {
            return amount;
        }
        loop {
            let amount = (1 + self.rng.below(40)) * 1_000;
            if reaches(amount) {
                return amount;
            }
        }
    }

    /// The agent's orders: how many, and the report of the one for `tx`.
    fn agent_orders(&self, tx: &str) -> Result<(usize, Option<DispenseReport>), Failure> {
        let view = invariants::read_agent(&self.path("agent.db")).map_err(|e| e.to_string())?;
        let report = view
            .orders
            .iter()
            .find(|o| o.order.tx_id.to_string() == tx)
            .and_then(|o| o.report.clone());
        Ok((view.orders.len(), report))
    }

    /// Settles an in-doubt withdrawal as an operator would after counting the cash: with
    /// what physically left the machine, through the guard rails of `tx resolve`.
    fn resolve_as_operator(&self, tx: &str, counted: u64) -> Result<(), String> {
        let id: qrcash_protocol::TxId = tx.parse()?;
        let (grace, now) = (self.hub_config.withdrawal.report_grace_s, self.clock.now());
        self.hub_db.write(|mut store| {
            admin::resolve_withdrawal(
                &mut store,
                &id,
                &admin::Resolution {
                    dispensed: counted,
                    operator: "campaign".into(),
                    reason: "cash counted in the machine".into(),
                },
                grace,
                now,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }

    fn deadlines_now(&self) -> Deadlines {
        Deadlines::OpenUntil {
            now: self.clock.now(),
            report_grace: self.hub_config.withdrawal.report_grace(),
        }
    }

    /// Runs one withdrawal with `fault` and checks the invariants afterwards.
    pub async fn run(&mut self, fault: Fault) -> Result<Outcome, Failure> {
        let started = Instant::now();
        let amount = self.pick_amount(fault);
        let k = amount / 1_000;
        let notes = u32::try_from(k / 10 + k % 10).unwrap_or(1);
        let before = self.machine();
        let orders_before = self.agent_orders("")?.0;
        let clear_device = matches!(fault, Fault::Device(_));
        match fault {
            Fault::Crash(step) => {
                self.kill_agent().await?;
                self.spawn_agent(Some(step)).await?;
            }
            Fault::Device(d) => {
                let n = |x: u32| Some(x.min(notes.saturating_sub(1)));
                self.sim.set_faults(match d {
                    DeviceFault::Jam(x) => Faults {
                        jam_after: n(x),
                        ..Faults::default()
                    },
                    DeviceFault::PickupError(x) => Faults {
                        pickup_error_after: n(x),
                        ..Faults::default()
                    },
                    DeviceFault::BillEnd(x) => Faults {
                        bill_end_after: n(x),
                        ..Faults::default()
                    },
                    DeviceFault::NoAnswer => Faults {
                        no_answer: true,
                        ..Faults::default()
                    },
                    DeviceFault::PowerLoss(x) => Faults {
                        power_loss_after: n(x),
                        ..Faults::default()
                    },
                });
            }
            _ => {}
        }
        let captured_from = self.captured.len();
        let strike = self.strike(fault);

        let code = self
            .phone
            .register_withdrawal(ACCOUNT, Amount::new(amount, Currency::JPY), STEP)
            .await
            .map_err(|e| fail("registering", e))?;
        let tx = code.tx_id.to_string();
        write_png(&self.path("code.png"), Some(&code.token))?;
        let request = self
            .phone
            .await_confirm_request(Some(code.tx_id), STEP)
            .await
            .map_err(|e| fail("waiting for the confirmation request", e));
        write_png(&self.path("code.png"), None)?;
        let request = request?;

        if fault
            == (Fault::HubRestart {
                after_confirm: false,
            })
        {
            self.restart_hub().await?;
        }
        if fault == Fault::LateConfirm {
            // The hub refuses from confirm_by + 1 on; its sweeper may expire it first.
            while self.clock.now() <= request.confirm_by {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let here = Position::new(SHIBUYA.0, SHIBUYA.1, 10.0);
        let evidence = || requests::evidence(Some(PIN), None, SystemClock.now());
        self.phone
            .confirm(&request, evidence(), Some(here))
            .await
            .map_err(|e| fail("confirming", e))?;
        if fault == Fault::ConfirmTwice {
            self.phone
                .confirm(&request, evidence(), Some(here))
                .await
                .map_err(|e| fail("confirming again", e))?;
        }

        let mut settle_within = STEP;
        match fault {
            Fault::KillAtOrder { after_ms } => {
                if !self.wait_order_on_wire(&tx).await {
                    return Err(format!(
                        "no dispense order for tx {tx} passed on the broker"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                self.kill_agent().await?;
                self.spawn_agent(None).await?;
                settle_within = Duration::from_secs(8);
            }
            Fault::Kill { after_ms } => {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                self.kill_agent().await?;
                self.spawn_agent(None).await?;
                settle_within = Duration::from_secs(8);
            }
            Fault::Crash(_) => {
                self.wait_agent_exit().await?;
                // Before its write-ahead the order died with the process; the hub sends it
                // again when the agent is back online, and the agent refuses it (the session
                // it names is gone): the hold is released within the usual wait.
                self.spawn_agent(None).await?;
            }
            Fault::BrokerOutage { after_ms, down_ms } => {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                self.broker_outage(Duration::from_millis(down_ms)).await?;
            }
            Fault::BrokerNodeKill { after_ms, down_ms } => {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                self.broker_node_kill(Duration::from_millis(down_ms))
                    .await?;
            }
            Fault::HubRestart {
                after_confirm: true,
            } => self.restart_hub().await?,
            _ => {}
        }
        if let Some(strike) = strike {
            strike.await.map_err(|e| fail("the fault's task", e))??;
            if let Some(cluster) = &self.cluster {
                cluster.wait_ready(None).await?;
            }
        }

        let mut phase = self.wait_settled(&tx, settle_within).await?;
        if phase.is_none() && self.agent_has_order_for(&tx)? {
            phase = self.wait_settled(&tx, STEP).await?;
        }
        let phase = match phase {
            Some(p) => p,
            None => match self.hub_phase(&tx)?.as_deref() {
                // The agent died between receiving the order and journalling it: the order
                // is gone with the process, the hold stays and the hub flags it after the
                // report grace (checked by the final sweep).
                Some("ordered") if !self.agent_has_order_for(&tx)? => "lost-order".to_owned(),
                other => return Err(format!("tx {tx} did not settle: still {other:?}")),
            },
        };

        if clear_device {
            self.sim.set_faults(Faults::default());
            self.sim.power_on();
            if matches!(
                fault,
                Fault::Device(DeviceFault::NoAnswer | DeviceFault::PowerLoss(_))
            ) {
                // A dead device leaves the ATM out of service: a technician restarts it.
                self.kill_agent().await?;
                self.spawn_agent(None).await?;
            }
        }
        let drained = self.wait_drained().await?;
        let mut verdict = self.check(drained, self.deadlines_now())?;
        let mut resent_and_refused = 0;

        if let Fault::Replay { older } = fault {
            let hub_before = self.read_hub()?;
            let machine_before = self.machine();
            self.pump_spy(Duration::from_millis(50), |_| false).await;
            let mut batch: Vec<(String, Vec<u8>)> = self.captured[captured_from..].to_vec();
            for _ in 0..older {
                if captured_from > 0 {
                    let i = self.rng.below(captured_from as u64) as usize;
                    batch.push(self.captured[i].clone());
                }
            }
            if let Some(spy) = self.spy.as_mut() {
                for (topic, payload) in &batch {
                    spy.publish(topic, payload.clone()).await;
                }
            }
            // A round trip through the hub after the replays: it handled them by then.
            self.phone
                .balance(ACCOUNT, 0, STEP)
                .await
                .map_err(|e| fail("balance after the replays", e))?;
            let drained = self.wait_drained().await?;
            let hub_after = self.read_hub()?;
            let phases = |h: &invariants::HubView| {
                h.withdrawals
                    .iter()
                    .map(|w| (w.tx_id.clone(), w.phase, w.settled))
                    .collect::<Vec<_>>()
            };
            let (before, after) = (phases(&hub_before), phases(&hub_after));
            let changed: Vec<_> = after.iter().filter(|w| !before.contains(w)).collect();
            // The one change a replay may cause: a replayed confirmation makes the hub resend
            // that withdrawal's stored order (in a fresh envelope, `docs/protocol.md` §4); an
            // order a crashed agent never started is refused by the ATM now that no customer
            // session matches it, and the hub releases its hold (Ordered -> Failed, one
            // posting). Nothing is dispensed: the machine check below still holds.
            let refused_resend = |(tx, phase, settled): &&(String, Phase, u64)| {
                *phase == Phase::Failed
                    && before
                        .iter()
                        .any(|b| &b.0 == tx && b.1 == Phase::Ordered && b.2 == *settled)
            };
            let explained = changed.iter().all(refused_resend)
                && before.len() == after.len()
                && hub_after.postings == hub_before.postings + changed.len() as u64;
            if explained {
                resent_and_refused = changed.len();
            } else {
                let shown: Vec<String> = changed
                    .iter()
                    .map(|(tx, phase, settled)| {
                        let was = before.iter().find(|b| &b.0 == tx);
                        format!("{tx}: {was:?} -> ({phase:?}, settled {settled})")
                    })
                    .collect();
                verdict.violations.push(format!(
                    "[replay] {} replayed messages changed the hub's withdrawals or ledger \
                     (withdrawals: {}; postings {} -> {})",
                    batch.len(),
                    if shown.is_empty() {
                        "unchanged".into()
                    } else {
                        shown.join(", ")
                    },
                    hub_before.postings,
                    hub_after.postings,
                ));
            }
            if self.machine() != machine_before {
                verdict
                    .violations
                    .push("[replay] replayed messages moved cash".into());
            }
            let again = self.check(drained, self.deadlines_now())?;
            verdict.violations.extend(again.violations);
        }

        // What each fault must end in, beyond the invariants.
        let paid = self.machine().delivered_value - before.delivered_value;
        let (orders_after, report) = self.agent_orders(&tx)?;
        let only_this_order = orders_after == orders_before + 1;
        let expect = |ok: bool, what: &str, v: &mut Verdict| {
            if !ok {
                v.violations.push(format!(
                    "[scenario] {}: {what} (tx {tx} ended {phase}, {paid} paid out)",
                    fault.kind()
                ));
            }
        };
        match fault {
            Fault::None | Fault::ConfirmTwice | Fault::Replay { .. } => expect(
                phase == "dispensed" && paid == amount,
                "the withdrawal completes exactly once",
                &mut verdict,
            ),
            Fault::LateConfirm => expect(
                matches!(phase.as_str(), "expired" | "cancelled") && paid == 0,
                "a late confirmation pays nothing",
                &mut verdict,
            ),
            Fault::HubKill { .. }
            | Fault::DatabaseRestart { .. }
            | Fault::BrokerNodeKill { .. } => expect(
                (phase == "dispensed" && paid == amount)
                    || (matches!(phase.as_str(), "failed" | "expired" | "cancelled") && paid == 0),
                "a hub instance's or the agent's broker node's death, or a database restart, \
                 completes the withdrawal or pays nothing, and never leaves it in doubt",
                &mut verdict,
            ),
            Fault::Crash(step) => {
                let bounds = report.as_ref().map(|r| {
                    (
                        r.dispensed.minor,
                        r.max_dispensed.map(|m| m.minor),
                        r.source,
                    )
                });
                let (ok, what) = match step {
                    CrashStep::BeforeWriteAhead => (
                        phase == "failed" && paid == 0 && report.is_none(),
                        "an order lost before its write-ahead is sent again once the ATM is \
                         back online, refused and released, and pays nothing",
                    ),
                    CrashStep::AfterWriteAhead => (
                        phase == "in_doubt"
                            && paid == 0
                            && bounds == Some((0, Some(amount), Some(CountSource::NoRecord))),
                        "in doubt without a dispense: nothing known, the amount as the upper bound",
                    ),
                    CrashStep::AfterCommand => (
                        phase == "in_doubt"
                            && paid > 0
                            && bounds == Some((paid, Some(paid), Some(CountSource::LateAnswer))),
                        "the device's late answer gives the exact count",
                    ),
                    CrashStep::BetweenBatches => (
                        phase == "in_doubt"
                            && paid > 0
                            && paid < amount
                            && bounds == Some((paid, Some(paid), Some(CountSource::DriverRecord))),
                        "the driver's record of this order gives the exact count",
                    ),
                    CrashStep::AfterDeviceOutcome => (
                        phase == "in_doubt"
                            && paid == amount
                            && bounds
                                == Some((amount, Some(amount), Some(CountSource::DriverRecord))),
                        "recovered in doubt after paying out once, with the device's counts",
                    ),
                    CrashStep::AfterReportQueued => (
                        phase == "dispensed" && paid == amount,
                        "the queued report is delivered after the restart",
                    ),
                };
                expect(ok, &format!("{what}; report {bounds:?}"), &mut verdict);
            }
            _ => expect(paid <= amount, "never more than the amount", &mut verdict),
        }
        // Whatever the fault: when this scenario's order is the only one that ran, its
        // report's bounds hold what physically left the machine, and an operator who counts
        // the cash can settle an in-doubt case with exactly that.
        if only_this_order && let Some(r) = &report {
            let order_amount = Amount::new(amount, Currency::JPY);
            match r.bounds(order_amount) {
                Some((low, high)) if (low..=high).contains(&paid) => {}
                b => verdict.violations.push(format!(
                    "[scenario] {}: tx {tx}: {paid} left the machine but the report's bounds are {b:?}",
                    fault.kind()
                )),
            }
            if phase == "in_doubt"
                && let Err(e) = self.resolve_as_operator(&tx, paid)
            {
                verdict.violations.push(format!(
                    "[scenario] {}: tx {tx}: the counted cash ({paid}) cannot settle it: {e}",
                    fault.kind()
                ));
            }
        }
        if paid == amount {
            self.last_paid = Some(amount);
        }
        if phase == "lost-order" {
            self.lost_orders.push(tx.clone());
        }
        let outcome = Outcome {
            fault,
            amount,
            phase,
            took: started.elapsed(),
            verdict,
            resent_and_refused,
        };
        if self.settings.verbose {
            eprintln!(
                "{:<28} {:>6} yen → {:<12} {:>6} ms  {}",
                format!("{fault:?}"),
                amount,
                outcome.phase,
                outcome.took.as_millis(),
                if outcome.verdict.is_ok() {
                    "ok".to_owned()
                } else {
                    outcome.verdict.violations.join("; ")
                }
            );
        }
        Ok(outcome)
    }

    /// Ends the campaign: stops the hub, moves its clock past every deadline, runs one
    /// sweep, and checks the invariants with nothing allowed to stay open.
    pub async fn finish(self) -> Result<Verdict, Failure> {
        Ok(self.finish_counting_released().await?.0)
    }

    /// [`World::finish`], and how many lost orders ended released rather than in doubt: the
    /// phone sent its confirmation again (its outbox, `docs/phone.md`), the hub answered the
    /// repeat with the stored order, the restarted agent refused it (no customer session
    /// matches it, and it never started) and the hub released the hold (`Ordered → Failed`).
    pub async fn finish_counting_released(mut self) -> Result<(Verdict, usize), Failure> {
        let drained = self.wait_drained().await?;
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let hub = match self.hub.take() {
            Some(h) => h.shutdown().await,
            None => None,
        };
        drop(hub);
        if let Some(cluster) = &self.cluster {
            cluster.lock().stop_all();
        }
        let w = &self.hub_config.withdrawal;
        self.clock.shift(
            Duration::from_secs(w.code_ttl_s + w.confirm_timeout_s + w.order_ttl_s)
                + w.report_grace()
                + Duration::from_secs(60),
        );
        let seed = self.rng.next_u64();
        let (config, key, clock) = (&self.hub_config, &self.hub_key, &self.clock);
        self.hub_db.write(|store| {
            let mut hub = make_hub(store, config, key, clock, seed)?;
            hub.sweep().map(drop).map_err(|e| fail("final sweep", e))
        })?;
        // The end state is judged whole: a line first seen at some scenario and still true
        // now (a message that never left the outbox) is reported again, as the final state.
        // The totals keep their carried drift, so an old discrepancy is not counted twice.
        self.reported.clear();
        let verdict = self.check(drained, Deadlines::AllPassed)?;
        let hub = self.read_hub()?;
        let released = hub
            .withdrawals
            .iter()
            .filter(|w| self.lost_orders.contains(&w.tx_id) && w.phase == Phase::Failed)
            .count();
        Ok((verdict, released))
    }
}

/// A hub over `store` with the campaign's settings, key and clock.
fn make_hub(
    store: HubStore,
    config: &HubConfig,
    key: &PrivateKey,
    clock: &ShiftClock,
    seed: u64,
) -> Result<Hub, Failure> {
    let warnings =
        WarningCatalog::load(config.warnings.file.as_deref(), &config.warnings.languages)
            .map_err(|e| fail("warnings", e))?;
    Ok(Hub::new(
        store,
        Signer::new(config.hub_id.clone(), key.clone()),
        config.clone(),
        warnings,
        Arc::new(clock.clone()),
        Box::new(SeededEntropy::new(seed)),
    ))
}

/// The hub instances of [`HubSetup::Instances`], not started: one configuration each, as an
/// operator would write it (the campaign's hub settings, a key file, the shared
/// subscription, the database, a fast sweeper and outbox resend).
fn instance_configs(
    settings: &Settings,
    dir: &Path,
    config: &HubConfig,
    key: &PrivateKey,
    broker_url: &str,
    database_url: &str,
) -> Result<Instances, Failure> {
    let HubSetup::Instances(n) = settings.hubs else {
        return Err("not a setup with hub instances".into());
    };
    let key_file = dir.join("hub-key.jwk");
    key.save(&key_file).map_err(|e| fail("hub key", e))?;
    let instances = Instances::new(&settings.agent_exe, dir, n, INSTANCE_LOG);
    for i in 0..n {
        let mut c = config.clone();
        c.key_file = key_file.clone();
        c.broker.url = broker_url.to_owned();
        c.broker.client_id = format!("hub-{i}");
        c.broker.shared_subscription = true;
        c.storage.database_url = Some(database_url.to_owned());
        c.storage.sweep_interval_s = 1;
        c.storage.outbox_retry_s = 5;
        let text = toml::to_string(&c).map_err(|e| fail("hub configuration", e))?;
        std::fs::write(instances.config(i), text).map_err(|e| fail("hub configuration", e))?;
    }
    Ok(instances)
}

fn write_agent_config(dir: &Path, broker: &BrokerConfig, port: &str) -> Result<(), Failure> {
    let p = |name: &str| dir.join(name).display().to_string();
    let (broker_url, failover) = (&broker.url, toml::Value::from(broker.failover_urls.clone()));
    let text = format!(
        r#"
atm_id = "{ATM}"
key_file = "{key}"
hub_keys = ["{hub}"]
database = "{db}"

[[cassettes]]
denomination = 10000
notes = 1000000

[[cassettes]]
denomination = 1000
notes = 1000000

[broker]
url = "{broker_url}"
failover_urls = {failover}

[camera]
kind = "files"
path = "{png}"
looping = true

[dispenser]
port = "{port}"
model = "lcdm-2000"
journal = "{journal}"
dispense_timeout_ms = 3000
max_notes_per_batch = {BATCH}

[outbox]
resend_initial_ms = 200
resend_max_ms = 1000

[timing]
min_frame_interval_ms = 40
confirm_grace_s = 1
"#,
        key = p("atm.jwk"),
        hub = p("hub.pub.jwk"),
        db = p("agent.db"),
        png = p("code.png"),
        journal = p("dispenser-journal.json"),
    );
    std::fs::write(dir.join("agent.toml"), text).map_err(|e| fail("agent configuration", e))
}

/// Campaign totals.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Scenarios run.
    pub scenarios: usize,
    /// Per fault kind: (scenarios, final phases seen with counts).
    pub by_kind: std::collections::BTreeMap<
        &'static str,
        (usize, std::collections::BTreeMap<String, usize>),
    >,
    /// Violations, prefixed with the scenario number and fault.
    pub violations: Vec<String>,
    /// Scenarios that could not run to the end (a step timed out), with the reason.
    pub errors: Vec<String>,
    /// Wall time.
    pub took: Duration,
    /// The final check after the sweep.
    pub final_verdict: Option<Verdict>,
    /// Stranded orders replays had resent and the ATM refused.
    pub resent_and_refused: usize,
    /// Lost orders released after the phone's resent confirmation made the hub resend them
    /// and the ATM refused them ([`World::finish_counting_released`]).
    pub lost_orders_released: usize,
}

impl Summary {
    /// Adds one scenario.
    pub fn add(&mut self, i: usize, o: &Outcome) {
        self.scenarios += 1;
        self.resent_and_refused += o.resent_and_refused;
        let e = self.by_kind.entry(o.fault.kind()).or_default();
        e.0 += 1;
        *e.1.entry(o.phase.clone()).or_default() += 1;
        for v in &o.verdict.violations {
            self.violations
                .push(format!("scenario {i} ({:?}): {v}", o.fault));
        }
    }

    /// A Markdown table of the tallies.
    pub fn table(&self) -> String {
        let mut s = String::from("| fault | scenarios | ended as |\n|---|---|---|\n");
        for (kind, (n, phases)) in &self.by_kind {
            let ended: Vec<String> = phases.iter().map(|(p, c)| format!("{p} {c}")).collect();
            s.push_str(&format!("| {kind} | {n} | {} |\n", ended.join(", ")));
        }
        s
    }
}

/// A campaign gives up after this many scenarios that could not run to the end.
const MAX_ERRORS: usize = 5;

/// Runs a campaign: every fault kind once (if `every_kind`), then random faults up to
/// `scenarios`, then the final sweep and check. A scenario that cannot run to the end is
/// recorded in [`Summary::errors`] and the campaign goes on (the invariants are still checked
/// after the next one and at the end); after [`MAX_ERRORS`] of them it gives up.
pub async fn campaign(
    settings: Settings,
    scenarios: usize,
    every_kind: bool,
) -> Result<Summary, Failure> {
    let started = Instant::now();
    let (seed, hubs, broker) = (settings.seed, settings.hubs, settings.broker);
    let mut world = World::start(settings).await?;
    // Debugging aid: `QRCASH_FAULT_ONLY=<kind>` runs only random faults of that kind.
    let only = std::env::var("QRCASH_FAULT_ONLY").ok();
    let mut plan = if every_kind && only.is_none() {
        Fault::every_kind(world.rng(), hubs, broker)
    } else {
        Vec::new()
    };
    plan.truncate(scenarios);
    let mut summary = Summary::default();
    for i in 0..scenarios {
        let fault = match plan.get(i) {
            Some(f) => *f,
            None => loop {
                let f = Fault::random(world.rng(), hubs, broker);
                if only.as_deref().is_none_or(|k| k == f.kind()) {
                    break f;
                }
            },
        };
        match world.run(fault).await {
            Ok(outcome) => summary.add(i, &outcome),
            Err(e) => {
                let e = format!("seed {seed}, scenario {i} ({fault:?}): {e}");
                eprintln!("SCENARIO ERROR {e}");
                summary.errors.push(e);
                if summary.errors.len() >= MAX_ERRORS {
                    return Err(summary.errors.join("\n"));
                }
            }
        }
    }
    let (v, released) = world.finish_counting_released().await?;
    summary.lost_orders_released = released;
    for line in &v.violations {
        summary.violations.push(format!("final check: {line}"));
    }
    summary.final_verdict = Some(v);
    summary.took = started.elapsed();
    Ok(summary)
}

impl Drop for World {
    fn drop(&mut self) {
        // The agent is a separate process: it must not outlive a failed campaign.
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
