//! The agent's shell: tokio tasks around the pure cores, talking over typed channels, one
//! file per task.
//!
//! - **camera** (a thread, [`camera`]): frames → scanner → decoded payloads → core.
//! - **link** ([`qrcash_io::link`]): connection state and raw down-link messages → core;
//!   renews the down-link subscription and the retained "online" presence on every
//!   connection (the last will says "offline"), backs off between reconnects.
//! - **outbox** ([`outbox`]): publishes queued messages in order, resends unacknowledged ones
//!   with backoff and after every reconnect; deletes nothing itself (the core applies acks).
//! - **core** ([`core`]): verifies hub messages ([`crate::inbound`]), feeds the [`Session`]
//!   machine and carries out the actions it returns (screen, journal, outbox, order look-up,
//!   write-ahead, the dispenser on `spawn_blocking`, the outcome's record), feeding each
//!   result back; the session owns the order's dispense sequence.
//!
//! Start-up recovery runs before any task: orders journalled as dispensing without an
//! outcome are settled as `InDoubt` from what the dispenser still knows.

mod camera;
mod core;
mod outbox;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use qrcash_hardware::camera::FrameSource;
use qrcash_hardware::dispenser::{Dispenser, Recovery};
use qrcash_io::Backoff;
use qrcash_io::KeyFile;
use qrcash_io::link::{self, LinkHandle, LinkOptions, Publication};
use qrcash_protocol::envelope::Claims;
use qrcash_protocol::keyset::HubTrust;
use qrcash_protocol::messages::{AtmUp, DispenseReport};
use qrcash_protocol::replay::ReplayConfig;
use qrcash_protocol::{Clock, OrderId, PrivateKey, Signer, SystemClock, TxId, topics};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use self::core::{Core, CoreInputs};
use self::outbox::{OutboxCmd, run_outbox};
use crate::config::AgentConfig;
use crate::dispense;
use crate::error::AgentError;
use crate::inbound::InboundVerifier;
use crate::session::{Screen, Session, SessionConfig};
use crate::store::{JournalKind, Outgoing, Store};

/// How long outbox messages stay valid: they may be delivered after a long offline period.
pub const OUTBOX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Environment variable naming a step at which the agent aborts itself, for crash tests,
/// in the order of a dispense: `before_write_ahead` (order verified, nothing journalled),
/// `after_write_ahead` (journalled as dispensing, nothing sent to the dispenser), the
/// driver's `after_command` and `between_batches`, `after_device_outcome` (dispenser
/// answered, outcome not yet recorded), `after_report_queued` (outcome and report
/// committed, report not yet sent); and `before_applying_ack` (a hub `Ack` verified, not
/// yet applied).
pub use qrcash_hardware::dispenser::CRASH_ENV;

pub use camera::live_scan_config;

/// The cassettes a heartbeat reports: each configured denomination, in position order, with
/// the kept count (`store::cassettes`; none kept is empty).
pub fn heartbeat_cassettes(
    configured: &[u64],
    kept: &[(u64, u32)],
) -> Vec<qrcash_protocol::messages::CassetteStatus> {
    use qrcash_protocol::messages::{CassetteState, CassetteStatus};
    configured
        .iter()
        .map(|d| {
            let notes = kept.iter().find(|(k, _)| k == d).map_or(0, |(_, n)| *n);
            CassetteStatus {
                denomination: *d,
                notes,
                state: if notes == 0 {
                    CassetteState::Empty
                } else {
                    CassetteState::Ok
                },
            }
        })
        .collect()
}

/// Whether an agent runs on a database whose liveness figures are `alive_at` and
/// `stopped_at` (`qrcash-agent status`): a running agent records that it is alive every
/// 5 s, so three missed records mean it is gone; a clean stop says so at once.
pub fn agent_alive(alive_at: Option<u64>, stopped_at: Option<u64>, now: u64) -> bool {
    alive_at.is_some_and(|a| now.saturating_sub(a) <= 3 * self::core::LIVENESS_EVERY_S)
        && stopped_at.is_none_or(|s| Some(s) < alive_at)
}
use qrcash_hardware::dispenser::crash_point;

/// What the agent reports to observers (status output, tests, the demo).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The screen changed.
    Screen(Screen),
    /// The broker link went up (subscribed) or down.
    Link {
        /// Up or down.
        up: bool,
    },
    /// A journal entry was written.
    Journal {
        /// Its kind.
        kind: JournalKind,
        /// Transaction.
        tx_id: Option<TxId>,
        /// Order.
        order_id: Option<OrderId>,
    },
    /// A message was queued in the outbox.
    Queued {
        /// Its `jti`.
        jti: String,
        /// Its type.
        kind: String,
    },
    /// The hub acknowledged a queued message.
    Delivered {
        /// Its `jti`.
        jti: String,
        /// Its type.
        kind: String,
    },
    /// The hub refused a queued message permanently; it moved to dead letters.
    DeadLettered {
        /// Its `jti`.
        jti: String,
    },
    /// The outbox is full: new sessions are refused until it drains.
    OutboxFull,
    /// An order's dispense ended and its report is queued.
    Dispensed(DispenseReport),
    /// An interrupted order was settled at start-up.
    Recovered(DispenseReport),
    /// A message from the hub was refused.
    InboundRejected {
        /// Why.
        error: String,
    },
}

/// A running agent.
pub struct AgentHandle {
    events: broadcast::Sender<AgentEvent>,
    screen: watch::Receiver<Screen>,
    stop: watch::Sender<bool>,
    camera_stop: Arc<AtomicBool>,
    camera: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    link: LinkHandle,
    recovered: Vec<DispenseReport>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("screen", &*self.screen.borrow())
            .finish_non_exhaustive()
    }
}

impl AgentHandle {
    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// What the screen shows now.
    pub fn screen(&self) -> Screen {
        self.screen.borrow().clone()
    }

    /// A watch on the screen.
    pub fn screen_watch(&self) -> watch::Receiver<Screen> {
        self.screen.clone()
    }

    /// Reports of orders settled by start-up recovery.
    pub fn recovered(&self) -> &[DispenseReport] {
        &self.recovered
    }

    /// Stops all tasks; the link publishes the retained "offline" presence before it
    /// disconnects (a clean disconnect discards the last will).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.camera_stop.store(true, Ordering::SeqCst);
        self.link.disconnect(Duration::from_secs(1)).await;
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        if let Some(c) = self.camera.take() {
            let _ = tokio::task::spawn_blocking(move || c.join()).await;
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.camera_stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts agents.
pub struct Agent;

type SharedDispenser = Arc<Mutex<Box<dyn Dispenser>>>;

/// Locks a mutex shared with a blocking thread. A panic inside a driver call leaves the
/// driver as it was (its own journal is the record), and the camera's figures are plain
/// counters: carry on with either.
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Agent {
    /// Starts an agent on the wall clock: recovery first, then the tasks.
    pub async fn start(
        config: AgentConfig,
        frames: Box<dyn FrameSource>,
        dispenser: Box<dyn Dispenser>,
    ) -> Result<AgentHandle, AgentError> {
        Self::start_with_clock(config, frames, dispenser, Arc::new(SystemClock)).await
    }

    /// Starts an agent with an injected clock.
    pub async fn start_with_clock(
        config: AgentConfig,
        frames: Box<dyn FrameSource>,
        dispenser: Box<dyn Dispenser>,
        clock: Arc<dyn Clock>,
    ) -> Result<AgentHandle, AgentError> {
        config.validate().map_err(AgentError::Config)?;
        let key = PrivateKey::load(&config.key_file)?;
        let hub_keys = config.load_hub_keys()?;
        let currency = config.currency().map_err(AgentError::Config)?;
        let bounds = config.outbox.bounds();
        let mut store = Store::open(&config.database, bounds)?;
        let outbox_store = Store::open(&config.database, bounds)?;
        // The configured keys are the roots; what the hub's key set taught under them.
        let trust = HubTrust::new(hub_keys, store.hub_trust_state()?);
        let signer = Signer::new(config.atm_id.clone(), key);
        let cassettes = config.denominations();
        let dispenser: SharedDispenser = Arc::new(Mutex::new(dispenser));
        let (events, _) = broadcast::channel(1024);

        store.journal(
            clock.now(),
            JournalKind::Started,
            None,
            None,
            json!({ "software": env!("CARGO_PKG_VERSION"), "kid": signer.kid().as_str() }),
        )?;

        // The configured counts only seed cassettes the database does not know yet: a
        // restart never resets what the agent counted out.
        let configured: Vec<(u64, u32)> = config
            .cassettes
            .iter()
            .map(|c| (c.denomination, c.notes))
            .collect();
        let seeded = store.seed_cassettes(&configured, clock.now())?;
        if !seeded.is_empty() {
            tracing::info!(?seeded, "cassette counts seeded from the configuration");
        }

        // --- Recovery, before anything can start a new dispense. ---
        let sealer = Sealer {
            signer: signer.clone(),
            hub_id: config.hub_id.clone(),
        };
        let unfinished = store.unfinished_orders()?;
        let d = dispenser.clone();
        let recovery = tokio::task::spawn_blocking(move || lock(&d).recover_last())
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let machine_clear = match &recovery {
            Ok(r) => r.machine_clear(),
            Err(e) => {
                tracing::warn!(error = %e, "dispenser recovery at start-up failed");
                // The alarm: the ATM starts out of service until the device answers.
                store.journal(
                    clock.now(),
                    JournalKind::DeviceFault,
                    None,
                    None,
                    json!({ "error": e.to_string(), "at": "start-up" }),
                )?;
                false
            }
        };
        let recovery_text = recovery.as_ref().map_err(|e| e.to_string());
        let mut recovered = Vec::new();
        for rec in unfinished {
            let report = dispense::recovered_report(
                &rec.order,
                &cassettes,
                match &recovery_text {
                    Ok(r) => Ok(*r),
                    Err(e) => Err(e.as_str()),
                },
            );
            let now = clock.now();
            let detail = json!({ "recovered": true, "recovery": recovery_detail(&recovery) });
            let out = store.finish_dispense(&report, detail, now, |seq| {
                sealer.seal(None, seq, now, AtmUp::DispenseReport(report.clone()), None)
            })?;
            store.journal(
                now,
                JournalKind::Recovered,
                Some(report.tx_id),
                Some(report.order_id),
                json!({ "jti": out.jti, "outcome": report.outcome, "dispensed": report.dispensed }),
            )?;
            tracing::warn!(order = %report.order_id, tx = %report.tx_id, dispensed = %report.dispensed,
                "interrupted dispense recovered and reported as in doubt");
            recovered.push(report);
        }

        // --- MQTT. ---
        let presence = topics::atm_presence(&config.atm_id);
        let status = |text: &str| Publication {
            topic: presence.clone(),
            payload: text.as_bytes().to_vec(),
            retain: true,
        };
        let mut options =
            LinkOptions::new(config.broker.clone(), config.atm_id.clone()).subscribe([
                topics::atm_down(&config.atm_id),
                topics::HUB_KEYS.to_owned(),
            ]);
        options.last_will = Some(status("offline"));
        options.on_connect = vec![status("online")];
        options.on_disconnect = vec![status("offline")];
        let (link, link_rx) = link::spawn(options)?;

        let (stop, stop_rx) = watch::channel(false);
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel::<OutboxCmd>();
        let (scan_tx, scan_rx) = mpsc::channel::<String>(16);
        let (screen_tx, screen) = watch::channel(Screen::ServiceUnavailable);

        let mut session = Session::new(
            SessionConfig {
                atm_id: config.atm_id.clone(),
                currency,
                cassettes: cassettes.clone(),
                hub_keys: trust.code_keys(),
                present_timeout: Duration::from_secs(config.timing.present_timeout_s),
                confirm_grace: Duration::from_secs(config.timing.confirm_grace_s),
                rescan_quiet: Duration::from_secs(config.timing.rescan_quiet_s),
            },
            Box::new(qrcash_protocol::envelope::new_jti),
        );
        if !machine_clear {
            session.set_device_out_of_service(
                "the dispenser is not ready: see the log".into(),
                recovery.is_ok(),
            );
        }

        let camera_stop = Arc::new(AtomicBool::new(false));
        let camera_health = Arc::new(Mutex::new(camera::CameraHealth::default()));
        let camera = {
            let stop = camera_stop.clone();
            let health = camera_health.clone();
            let min = Duration::from_millis(config.timing.min_frame_interval_ms);
            std::thread::Builder::new()
                .name("qrcash-camera".into())
                .spawn(move || camera::camera_loop(frames, scan_tx, stop, min, health))
                .map_err(|e| AgentError::Task(e.to_string()))?
        };

        let (done_tx, done_rx) = mpsc::channel(4);
        let core = Core {
            session,
            store,
            sealer,
            verifier: InboundVerifier::new(
                &config.atm_id,
                &config.hub_id,
                trust.message_keys(),
                ReplayConfig::default(),
            ),
            hub_id: config.hub_id.clone(),
            trust,
            refused_key_set: None,
            statuses: Default::default(),
            liveness_at: 0,
            hub_heard_at: 0,
            camera: camera_health,
            clock: clock.clone(),
            cassettes,
            events: events.clone(),
            screen: screen_tx,
            outbox: outbox_tx.clone(),
            dispenser,
            device: done_tx,
            link_up: false,
            checking: false,
        };
        let tasks = vec![
            tokio::spawn(run_outbox(
                outbox_store,
                link.clone(),
                topics::atm_up(&config.atm_id),
                outbox_rx,
                Backoff::new(
                    Duration::from_millis(config.outbox.resend_initial_ms.max(10)),
                    Duration::from_millis(config.outbox.resend_max_ms.max(10)),
                ),
                clock,
            )),
            tokio::spawn(core.run(
                CoreInputs {
                    link: link_rx,
                    scans: scan_rx,
                    done: done_rx,
                    stop: stop_rx,
                },
                config.timing.heartbeat(),
                config.timing.device_check(),
            )),
        ];
        tracing::info!(atm = %config.atm_id, kid = %signer.kid(), "agent started");
        Ok(AgentHandle {
            events,
            screen,
            stop,
            camera_stop,
            camera: Some(camera),
            tasks,
            link,
            recovered,
        })
    }
}

fn recovery_detail(
    r: &Result<Recovery, qrcash_hardware::dispenser::DispenserError>,
) -> serde_json::Value {
    match r {
        Ok(r) => json!({
            "last": r.last,
            "purged": r.purged,
            "purge_error": r.purge_error,
            "machine_clear": r.machine_clear(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// Seals up-link messages as this ATM.
#[derive(Clone)]
struct Sealer {
    signer: Signer,
    hub_id: String,
}

impl Sealer {
    fn seal(
        &self,
        jti: Option<String>,
        seq: u64,
        now: u64,
        msg: AtmUp,
        re: Option<String>,
    ) -> Outgoing {
        let kind = up_kind(&msg);
        let mut claims = Claims::new(
            self.signer.id(),
            self.hub_id.clone(),
            seq,
            now,
            OUTBOX_TTL,
            msg,
        );
        if let Some(jti) = jti {
            claims.jti = jti;
        }
        claims.re = re;
        Outgoing {
            jti: claims.jti.clone(),
            kind,
            sealed: self.signer.seal(&claims),
        }
    }
}

/// Seals `msg` as this ATM with `key` for a message that does not go through the outbox
/// (the doctor's heartbeat, an enrolment): `exp` = `iat` + 300, `seq` reserved by the caller.
/// Returns its `jti` and the JWS.
pub fn seal_direct(
    cfg: &crate::AgentConfig,
    key: &qrcash_protocol::PrivateKey,
    seq: u64,
    now: u64,
    msg: AtmUp,
) -> (String, String) {
    let claims = Claims::new(
        cfg.atm_id.clone(),
        cfg.hub_id.clone(),
        seq,
        now,
        Duration::from_secs(300),
        msg,
    );
    let sealed = Signer::new(cfg.atm_id.clone(), key.clone()).seal(&claims);
    (claims.jti, sealed)
}

/// The up-link message type's name.
pub fn up_kind(msg: &AtmUp) -> &'static str {
    match msg {
        AtmUp::CodePresented(_) => "CodePresented",
        AtmUp::DispenseReport(_) => "DispenseReport",
        AtmUp::OrderRefused(_) => "OrderRefused",
        AtmUp::SessionCancelled(_) => "SessionCancelled",
        AtmUp::Heartbeat(_) => "Heartbeat",
        AtmUp::Enrol(_) => "Enrol",
        AtmUp::RotateKey(_) => "RotateKey",
    }
}
