//! The agent's shell: tokio tasks around the pure cores, talking over typed channels.
//!
//! - **camera** (a thread): frames → [`Scanner`] → decoded payloads → core.
//! - **link** ([`qrcash_io::link`]): connection state and raw down-link messages → core;
//!   renews the down-link subscription and the retained "online" presence on every
//!   connection (the last will says "offline"), backs off between reconnects.
//! - **outbox**: publishes queued messages in order, resends unacknowledged ones with backoff
//!   and after every reconnect; deletes nothing itself (the core applies acks).
//! - **core** (this module's [`Core`]): verifies hub messages ([`crate::inbound`]), feeds
//!   the [`Session`] machine, carries out its actions (journal, outbox, screen) and drives
//!   each order's [`DispenseSequence`] with the dispenser on `spawn_blocking`.
//!
//! Start-up recovery runs before any task: orders journalled as dispensing without an
//! outcome are settled as `InDoubt` from what the dispenser still knows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use qrcash_hardware::camera::{CameraError, FrameSource, LumaFrame};
use qrcash_hardware::dispenser::{DispenseOutcome as DeviceOutcome, Dispenser, Recovery};
use qrcash_hardware::scan::{PayloadFilter, ScanConfig, Scanner};
use qrcash_io::Backoff;
use qrcash_io::KeyFile;
use qrcash_io::link::{self, LinkEvent, LinkHandle, LinkOptions, Publication, PublishError};
use qrcash_protocol::envelope::Claims;
use qrcash_protocol::messages::{
    AtmDown, AtmUp, CassetteState, CassetteStatus, DispenseReport, Heartbeat,
};
use qrcash_protocol::replay::{ReplayConfig, SenderWindow};
use qrcash_protocol::{Clock, OrderId, PrivateKey, Signer, SystemClock, TxId, token, topics};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use crate::dispense::{self, DispenseSequence, Happened, Next};
use crate::error::{AgentError, StoreError};
use crate::inbound::InboundVerifier;
use crate::session::{Action, Input, Screen, Session, SessionConfig};
use crate::store::{JournalKind, Outgoing, Priority, Store};

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

    /// Stops all tasks (the presence topic falls back to "offline" by the broker's last
    /// will or on the next connect).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.camera_stop.store(true, Ordering::SeqCst);
        self.link.disconnect().await;
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

fn lock(d: &SharedDispenser) -> std::sync::MutexGuard<'_, Box<dyn Dispenser>> {
    // A panic inside a driver call leaves the driver as it was; its own journal is the
    // record, so carry on with it.
    d.lock().unwrap_or_else(PoisonError::into_inner)
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
        let mut options = LinkOptions::new(config.broker.clone(), config.atm_id.clone())
            .subscribe([topics::atm_down(&config.atm_id)]);
        options.last_will = Some(status("offline"));
        options.on_connect = vec![status("online")];
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
                hub_keys: hub_keys.clone(),
                present_timeout: Duration::from_secs(config.timing.present_timeout_s),
                confirm_grace: Duration::from_secs(config.timing.confirm_grace_s),
                rescan_quiet: Duration::from_secs(config.timing.rescan_quiet_s),
            },
            Box::new(qrcash_protocol::envelope::new_jti),
        );
        if !machine_clear {
            session.set_out_of_service("the dispenser is not ready: see the log".into());
        }

        let camera_stop = Arc::new(AtomicBool::new(false));
        let camera = {
            let stop = camera_stop.clone();
            let min = Duration::from_millis(config.timing.min_frame_interval_ms);
            std::thread::Builder::new()
                .name("qrcash-camera".into())
                .spawn(move || camera_loop(frames, scan_tx, stop, min))
                .map_err(|e| AgentError::Task(e.to_string()))?
        };

        let core = Core {
            session,
            store,
            sealer,
            verifier: InboundVerifier::new(
                &config.atm_id,
                &config.hub_id,
                hub_keys,
                ReplayConfig::default(),
            ),
            clock: clock.clone(),
            cassettes,
            cassette_notes: config.cassettes.iter().map(|c| c.notes).collect(),
            events: events.clone(),
            screen: screen_tx,
            outbox: outbox_tx.clone(),
            dispenser,
            active: None,
            link_up: false,
        };
        let (done_tx, done_rx) = mpsc::channel(4);
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
                    done_tx,
                    done: done_rx,
                    stop: stop_rx,
                },
                config.timing.heartbeat(),
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

/// The up-link message type's name.
pub fn up_kind(msg: &AtmUp) -> &'static str {
    match msg {
        AtmUp::CodePresented(_) => "CodePresented",
        AtmUp::DispenseReport(_) => "DispenseReport",
        AtmUp::OrderRefused(_) => "OrderRefused",
        AtmUp::SessionCancelled(_) => "SessionCancelled",
        AtmUp::Heartbeat(_) => "Heartbeat",
    }
}

// ---------------------------------------------------------------------------------------
// Camera
// ---------------------------------------------------------------------------------------

fn camera_loop(
    mut frames: Box<dyn FrameSource>,
    scans: mpsc::Sender<String>,
    stop: Arc<AtomicBool>,
    min_interval: Duration,
) {
    let mut scanner = Scanner::new(ScanConfig {
        filter: PayloadFilter::new(token::looks_like_token),
        // The expensive passes (double resolution, rqrr's search: ~35 ms on an empty
        // 1280x720 frame, against ~1 ms for the fast ones) run on every 4th frame only: a
        // code held up to the camera stays for many frames, and a small board keeps its
        // frame rate while nobody is there.
        slow_search_every: 4,
        // A phone held up to an ATM's camera shows its code at several pixels per module;
        // the double-resolution pass for tiny codes would only cost memory (frame buffers
        // four times the frame) on a board where every megabyte counts.
        upsample_fallback: false,
        ..ScanConfig::default()
    });
    let mut frame = LumaFrame::default();
    while !stop.load(Ordering::SeqCst) {
        let started = std::time::Instant::now();
        match frames.next_frame(&mut frame) {
            Ok(()) => {
                if let Some(d) = scanner.scan(&frame)
                    && scans.blocking_send(d.payload).is_err()
                {
                    return;
                }
            }
            Err(CameraError::Exhausted(n)) => {
                tracing::info!(frames = n, "camera source exhausted");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "camera frame failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if let Some(rest) = min_interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

// ---------------------------------------------------------------------------------------
// MQTT link
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum OutboxCmd {
    LinkUp,
    LinkDown,
    /// Something was queued or acknowledged: look at the queue again.
    Wake,
}

// ---------------------------------------------------------------------------------------
// Outbox sender
// ---------------------------------------------------------------------------------------

/// Messages published per round; the rest follow once these are acknowledged.
const OUTBOX_BATCH: u32 = 64;

async fn run_outbox(
    mut store: Store,
    mqtt: LinkHandle,
    up_topic: String,
    mut cmds: mpsc::UnboundedReceiver<OutboxCmd>,
    mut backoff: Backoff,
    clock: Arc<dyn Clock>,
) {
    let mut up = false;
    // jtis published on the current connection and not yet acknowledged.
    let mut sent: std::collections::HashSet<String> = Default::default();
    let mut resend_at: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match resend_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut resend_all = false;
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(mut cmd) = cmd else { return };
                // Apply every command already waiting (in order) before one pass over the
                // queue: after an offline period each `Ack` sends a `Wake`, and one pass per
                // burst is enough because a pass reads the queue as it is now.
                loop {
                    match cmd {
                        OutboxCmd::LinkUp => {
                            up = true;
                            sent.clear();
                            backoff.reset();
                        }
                        OutboxCmd::LinkDown => {
                            up = false;
                            resend_at = None;
                        }
                        OutboxCmd::Wake => {}
                    }
                    match cmds.try_recv() {
                        Ok(next) => cmd = next,
                        Err(_) => break,
                    }
                }
            }
            () = timer => {
                resend_all = true;
            }
        }
        if !up {
            continue;
        }
        let pending = match store.pending(OUTBOX_BATCH) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                resend_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                continue;
            }
        };
        let waiting: std::collections::HashSet<String> =
            pending.iter().map(|m| m.jti.clone()).collect();
        let acked_something = sent.iter().any(|j| !waiting.contains(j));
        sent.retain(|j| waiting.contains(j));
        if acked_something {
            backoff.reset();
        }
        let mut published = Vec::new();
        // Order: outside a resend round, a new message goes out only while nothing older is
        // still unacknowledged; otherwise it waits for the next round, which republishes the
        // whole queue oldest first.
        let mut older_outstanding = false;
        for m in &pending {
            if !resend_all && sent.contains(&m.jti) {
                older_outstanding = true;
                continue;
            }
            if !resend_all && older_outstanding {
                break;
            }
            // try_publish: never block on the client's queue while the link is shaky.
            match mqtt.try_publish(&up_topic, m.sealed.clone().into_bytes()) {
                Ok(()) => {
                    sent.insert(m.jti.clone());
                    published.push(m.id);
                }
                Err(PublishError::Full) => {
                    tracing::debug!("MQTT client queue full; retrying later");
                    break;
                }
                Err(PublishError::Closed) => return,
            }
        }
        if !published.is_empty() {
            tracing::debug!(
                count = published.len(),
                resend = resend_all,
                "outbox published"
            );
            if let Err(e) = store.mark_sent(&published, clock.now()) {
                tracing::warn!(error = %e, "cannot record outbox attempts");
            }
        }
        resend_at = if pending.is_empty() {
            None
        } else if resend_all || resend_at.is_none() || acked_something {
            Some(tokio::time::Instant::now() + backoff.next_delay())
        } else {
            resend_at
        };
    }
}

// ---------------------------------------------------------------------------------------
// Core
// ---------------------------------------------------------------------------------------

struct CoreInputs {
    link: mpsc::Receiver<LinkEvent>,
    scans: mpsc::Receiver<String>,
    done_tx: mpsc::Sender<DeviceDone>,
    done: mpsc::Receiver<DeviceDone>,
    stop: watch::Receiver<bool>,
}

/// What the dispenser job hands back.
#[derive(Debug)]
struct DeviceDone {
    order_id: OrderId,
    result: Result<DeviceOutcome, String>,
    recovery: Option<Result<Recovery, String>>,
}

struct Core {
    session: Session,
    store: Store,
    sealer: Sealer,
    verifier: InboundVerifier,
    clock: Arc<dyn Clock>,
    cassettes: Vec<u64>,
    cassette_notes: Vec<u32>,
    events: broadcast::Sender<AgentEvent>,
    screen: watch::Sender<Screen>,
    outbox: mpsc::UnboundedSender<OutboxCmd>,
    dispenser: SharedDispenser,
    active: Option<DispenseSequence>,
    link_up: bool,
}

impl Core {
    async fn run(mut self, mut inputs: CoreInputs, heartbeat: Duration) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut beat = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.show(self.initial_screen());
        let _ = self.outbox.send(OutboxCmd::Wake);
        loop {
            tokio::select! {
                _ = inputs.stop.changed() => return,
                ev = inputs.link.recv() => match ev {
                    None => return,
                    Some(LinkEvent::Up) => {
                        let _ = self.outbox.send(OutboxCmd::LinkUp);
                        self.link_up = true;
                        self.set_status("link", "up");
                        let _ = self.events.send(AgentEvent::Link { up: true });
                        self.apply(Input::Link(true), &inputs.done_tx);
                    }
                    Some(LinkEvent::Down) => {
                        let _ = self.outbox.send(OutboxCmd::LinkDown);
                        self.link_up = false;
                        self.set_status("link", "down");
                        let _ = self.events.send(AgentEvent::Link { up: false });
                        self.apply(Input::Link(false), &inputs.done_tx);
                    }
                    Some(LinkEvent::Message { topic, payload }) => {
                        self.inbound(&topic, &payload, &inputs.done_tx);
                    }
                },
                Some(text) = inputs.scans.recv() => {
                    self.apply(Input::CodeRead(text), &inputs.done_tx);
                }
                Some(done) = inputs.done.recv() => self.device_done(done, &inputs.done_tx),
                _ = tick.tick() => self.apply(Input::Tick, &inputs.done_tx),
                _ = beat.tick() => self.heartbeat(),
            }
        }
    }

    fn initial_screen(&self) -> Screen {
        match self.session.phase() {
            crate::session::Phase::OutOfService { reason } => Screen::OutOfService {
                reason: reason.clone(),
            },
            _ => Screen::ServiceUnavailable,
        }
    }

    fn set_status(&mut self, key: &str, value: &str) {
        if let Err(e) = self.store.set_status_value(key, value) {
            tracing::warn!(error = %e, key, "cannot record status");
        }
    }

    fn show(&mut self, screen: Screen) {
        tracing::info!(screen = ?screen, "screen");
        if let Ok(text) = serde_json::to_string(&screen) {
            self.set_status("screen", &text);
        }
        self.screen.send_replace(screen.clone());
        let _ = self.events.send(AgentEvent::Screen(screen));
    }

    fn journal(
        &mut self,
        kind: JournalKind,
        tx_id: Option<TxId>,
        order_id: Option<OrderId>,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self
            .store
            .journal(self.clock.now(), kind, tx_id, order_id, detail)
        {
            tracing::error!(error = %e, ?kind, "cannot write the journal");
        }
        let _ = self.events.send(AgentEvent::Journal {
            kind,
            tx_id,
            order_id,
        });
    }

    fn apply(&mut self, input: Input, done_tx: &mpsc::Sender<DeviceDone>) {
        let now = self.clock.now();
        let actions = self.session.handle(input, now);
        self.set_status("state", &format!("{:?}", self.session.atm_state()));
        for action in actions {
            self.act(action, done_tx);
        }
    }

    fn act(&mut self, action: Action, done_tx: &mpsc::Sender<DeviceDone>) {
        match action {
            Action::Show(s) => self.show(s),
            Action::Journal {
                kind,
                tx_id,
                order_id,
                detail,
            } => self.journal(kind, tx_id, order_id, detail),
            Action::Send {
                jti,
                msg,
                re,
                priority,
            } => {
                let now = self.clock.now();
                let sealer = self.sealer.clone();
                let result = self.store.enqueue(priority, now, |seq| {
                    sealer.seal(Some(jti.clone()), seq, now, msg, re)
                });
                match result {
                    Ok(out) => self.queued(&out),
                    Err(e) => {
                        self.enqueue_failed(e);
                        self.apply(Input::QueueFailed { jti }, done_tx);
                    }
                }
            }
            Action::Dispense {
                order,
                request,
                re: _,
            } => {
                let seq = DispenseSequence::new(order, request, self.cassettes.clone());
                self.active = Some(seq);
                self.drive_dispense(None, done_tx);
            }
            Action::Recover => {
                let d = self.dispenser.clone();
                let done = done_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let r = lock(&d).recover_last().map_err(|e| e.to_string());
                    let _ = done.blocking_send(DeviceDone {
                        order_id: OrderId([0; 16]),
                        result: Err("recovery only".into()),
                        recovery: Some(r),
                    });
                });
            }
        }
    }

    fn queued(&mut self, out: &Outgoing) {
        tracing::debug!(jti = %out.jti, kind = out.kind, "queued");
        let _ = self.events.send(AgentEvent::Queued {
            jti: out.jti.clone(),
            kind: out.kind.into(),
        });
        let _ = self.outbox.send(OutboxCmd::Wake);
    }

    fn enqueue_failed(&mut self, e: StoreError) {
        tracing::error!(error = %e, "cannot queue a message for the hub");
        if matches!(e, StoreError::OutboxFull { .. }) {
            self.set_status("alarm", "outbox full");
            self.journal(
                JournalKind::OutboxFull,
                None,
                None,
                json!({ "error": e.to_string() }),
            );
            let _ = self.events.send(AgentEvent::OutboxFull);
        }
    }

    /// Runs the dispense sequence as far as it can go without waiting for the device.
    fn drive_dispense(&mut self, finished: Option<DeviceDone>, done_tx: &mpsc::Sender<DeviceDone>) {
        let Some(mut seq) = self.active.take() else {
            return;
        };
        if let Some(done) = finished {
            crash_point("after_device_outcome");
            let device_detail = json!({
                "device": match &done.result { Ok(o) => json!(o), Err(e) => json!({ "error": e }) },
                "recovery": done.recovery.as_ref().map(|r| match r {
                    Ok(r) => json!({ "purged": r.purged, "machine_clear": r.machine_clear() }),
                    Err(e) => json!({ "error": e }),
                }),
            });
            let clear = match &done.recovery {
                None => true,
                Some(Ok(r)) => r.machine_clear(),
                Some(Err(_)) => false,
            };
            if let Err(e) = seq.on(Happened::DeviceFinished(done.result)) {
                tracing::error!(error = %e, "dispense sequence");
                return;
            }
            let Next::Record(report) = seq.next() else {
                return;
            };
            let now = self.clock.now();
            let sealer = self.sealer.clone();
            let msg = AtmUp::DispenseReport(report.clone());
            match self
                .store
                .finish_dispense(&report, device_detail, now, |s| {
                    sealer.seal(None, s, now, msg, None)
                }) {
                Ok(out) => {
                    crash_point("after_report_queued");
                    let _ = seq.on(Happened::Recorded);
                    let _ = self.events.send(AgentEvent::Journal {
                        kind: JournalKind::Reported,
                        tx_id: Some(report.tx_id),
                        order_id: Some(report.order_id),
                    });
                    self.queued(&out);
                    self.count_out(&report);
                    tracing::info!(order = %report.order_id, outcome = ?report.outcome, dispensed = %report.dispensed, "dispense reported");
                    let _ = self.events.send(AgentEvent::Dispensed(report.clone()));
                    self.apply(
                        Input::DispenseFinished {
                            order_id: report.order_id,
                            dispensed: report.dispensed,
                            outcome: report.outcome,
                            machine_clear: clear,
                        },
                        done_tx,
                    );
                }
                Err(e) => {
                    // The order stays "dispensing" on disk: the next start recovers it as in
                    // doubt. Stop serving until then.
                    tracing::error!(error = %e, order = %report.order_id, "cannot record the dispense outcome");
                    self.session
                        .set_out_of_service("the agent database failed".into());
                    self.show(Screen::OutOfService {
                        reason: "database failure".into(),
                    });
                }
            }
            return;
        }
        match seq.next() {
            Next::WriteAhead => {
                crash_point("before_write_ahead");
                let order = seq.order().clone();
                let now = self.clock.now();
                let detail = json!({ "amount": order.amount, "notes": order.notes });
                match self.store.begin_dispense(&order, now, None, detail) {
                    Ok(()) => {
                        let _ = self.events.send(AgentEvent::Journal {
                            kind: JournalKind::DispenseStarted,
                            tx_id: Some(order.tx_id),
                            order_id: Some(order.order_id),
                        });
                        crash_point("after_write_ahead");
                        let _ = seq.on(Happened::WriteAheadCommitted);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, order = %order.order_id, "write-ahead failed: not dispensing");
                        let report = dispense::report_for(
                            &order,
                            &self.cassettes,
                            Err(&format!("not dispensed: {e}")),
                        );
                        self.session
                            .set_out_of_service("the agent database failed".into());
                        self.show(Screen::OutOfService {
                            reason: "database failure".into(),
                        });
                        let _ = self.events.send(AgentEvent::Dispensed(report));
                        return;
                    }
                }
                let Next::RunDevice(request) = seq.next() else {
                    return;
                };
                let order_id = seq.order().order_id;
                let _ = seq.on(Happened::DeviceStarted);
                self.active = Some(seq);
                let d = self.dispenser.clone();
                let done = done_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let mut dev = lock(&d);
                    let result = dev
                        .dispense(&order_id.to_string(), &request)
                        .map_err(|e| e.to_string());
                    let recovery = match &result {
                        Ok(o) if o.needs_recovery() => {
                            Some(dev.recover_last().map_err(|e| e.to_string()))
                        }
                        _ => None,
                    };
                    drop(dev);
                    let _ = done.blocking_send(DeviceDone {
                        order_id,
                        result,
                        recovery,
                    });
                });
            }
            _ => self.active = Some(seq),
        }
    }

    fn device_done(&mut self, done: DeviceDone, done_tx: &mpsc::Sender<DeviceDone>) {
        let is_active = self
            .active
            .as_ref()
            .is_some_and(|s| s.order().order_id == done.order_id);
        if is_active {
            self.drive_dispense(Some(done), done_tx);
        } else if let Some(r) = done.recovery {
            // A recovery run requested by the session.
            match r {
                Ok(r) if r.machine_clear() => self.apply(Input::MachineClear, done_tx),
                Ok(_) => {
                    tracing::error!("dispenser still not clear after recovery: operator needed")
                }
                Err(e) => tracing::error!(error = %e, "dispenser recovery failed: operator needed"),
            }
        }
    }

    fn count_out(&mut self, report: &DispenseReport) {
        for n in &report.notes {
            if let Some(i) = self.cassettes.iter().position(|d| *d == n.denomination) {
                self.cassette_notes[i] = self.cassette_notes[i].saturating_sub(n.exited);
            }
        }
    }

    fn inbound(&mut self, topic: &str, payload: &[u8], done_tx: &mpsc::Sender<DeviceDone>) {
        let now = self.clock.now();
        let window = match self.store.hub_window() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the hub replay window");
                return;
            }
        };
        let (claims, next) = match self.verifier.verify(topic, payload, window, now) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, topic, bytes = payload.len(), "message from the hub refused");
                self.journal(
                    JournalKind::InboundRejected,
                    None,
                    None,
                    json!({ "error": e.to_string(), "topic": topic }),
                );
                let _ = self.events.send(AgentEvent::InboundRejected {
                    error: e.to_string(),
                });
                return;
            }
        };
        let jti = claims.jti.clone();
        match claims.msg {
            // Acks and refusals are applied *before* their `seq` is saved as seen: applying
            // them is idempotent, and a crash in between must leave the message acceptable
            // again, because the hub answers the resent duplicate with the very same sealed
            // answer. (Saved first, the answer was refused as a replay forever.)
            AtmDown::Ack(ack) => {
                crash_point("before_applying_ack");
                match self.store.ack_with_window(&ack.ids, now, next) {
                    Ok(removed) => {
                        for (jti, kind) in removed {
                            let _ = self.events.send(AgentEvent::Delivered { jti, kind });
                        }
                        let _ = self.outbox.send(OutboxCmd::Wake);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot apply an ack"),
                }
            }
            AtmDown::Rejected(r) => {
                let Some(re) = claims.re else {
                    self.save_window(next);
                    tracing::warn!(reason = ?r.reason, message = %r.message, "hub refusal without re");
                    return;
                };
                tracing::warn!(re = %re, reason = ?r.reason, message = %r.message, "hub refused a message");
                if r.reason.is_permanent() {
                    match self.store.dead_letter(&re, &r.reason, &r.message, now) {
                        Ok(true) => {
                            let _ = self
                                .events
                                .send(AgentEvent::DeadLettered { jti: re.clone() });
                            let _ = self.outbox.send(OutboxCmd::Wake);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot move a message to dead letters")
                        }
                    }
                }
                self.save_window(next);
                self.apply(
                    Input::SendRefused {
                        re,
                        reason: r.reason,
                    },
                    done_tx,
                );
            }
            AtmDown::DispenseOrder(order) => {
                self.save_window(next);
                // At most one dispense per order id, ever: a repeat gets the stored answer.
                match self.store.order(order.order_id) {
                    Ok(None) => self.apply(
                        Input::Down {
                            jti,
                            msg: AtmDown::DispenseOrder(order),
                        },
                        done_tx,
                    ),
                    Ok(Some(rec)) => self.repeat_order(jti, rec),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot check the order; not executing it")
                    }
                }
            }
            msg => {
                self.save_window(next);
                self.apply(Input::Down { jti, msg }, done_tx)
            }
        }
    }

    fn save_window(&mut self, w: SenderWindow) {
        if let Err(e) = self.store.save_hub_window(w) {
            tracing::error!(error = %e, "cannot save the hub replay window");
        }
    }

    fn repeat_order(&mut self, jti: String, rec: crate::store::OrderRecord) {
        let order = rec.order;
        let in_progress = self
            .active
            .as_ref()
            .is_some_and(|s| s.order().order_id == order.order_id);
        tracing::warn!(order = %order.order_id, in_progress, "order already started: not dispensing again");
        self.journal(
            JournalKind::OrderRefused,
            Some(order.tx_id),
            Some(order.order_id),
            json!({ "reason": "already started", "in_progress": in_progress }),
        );
        if in_progress {
            return;
        }
        // An order journalled as dispensing is never refused, whatever path leads here: notes
        // may have left for it. Without its report its outcome is unknown until recovery
        // (the next start) reports it in doubt; until then the hub keeps the hold.
        let Some(report) = rec.report else {
            tracing::error!(order = %order.order_id, "repeated order is dispensing without an outcome: in doubt, reported by recovery");
            return;
        };
        let now = self.clock.now();
        let sealer = self.sealer.clone();
        let msg = AtmUp::DispenseReport(report);
        match self.store.enqueue(Priority::Critical, now, |seq| {
            sealer.seal(None, seq, now, msg, Some(jti))
        }) {
            Ok(out) => self.queued(&out),
            Err(e) => self.enqueue_failed(e),
        }
    }

    fn heartbeat(&mut self) {
        if !self.link_up {
            return;
        }
        match self.store.has_pending_kind("Heartbeat") {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return;
            }
        }
        let outbox = self.store.outbox_stats().map(|s| s.messages).unwrap_or(0);
        let hb = Heartbeat {
            state: self.session.atm_state(),
            cassettes: self
                .cassettes
                .iter()
                .zip(&self.cassette_notes)
                .map(|(d, n)| CassetteStatus {
                    denomination: *d,
                    notes: *n,
                    state: if *n == 0 {
                        CassetteState::Empty
                    } else {
                        CassetteState::Ok
                    },
                })
                .collect(),
            outbox: u32::try_from(outbox).unwrap_or(u32::MAX),
            software: env!("CARGO_PKG_VERSION").into(),
        };
        let now = self.clock.now();
        let sealer = self.sealer.clone();
        match self.store.enqueue(Priority::Normal, now, |seq| {
            sealer.seal(None, seq, now, AtmUp::Heartbeat(hb), None)
        }) {
            Ok(out) => self.queued(&out),
            Err(e) => self.enqueue_failed(e),
        }
    }
}
