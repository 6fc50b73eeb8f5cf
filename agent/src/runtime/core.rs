//! The core task: verifies hub messages ([`crate::inbound`]), feeds the [`Session`] machine
//! and carries out the actions it returns: the screen, the journal, the outbox, order
//! look-ups, the write-ahead record, the dispenser (on `spawn_blocking`) and the outcome's
//! record. Each action's result goes back to the session as an input; the core decides
//! nothing about money or the device itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qrcash_hardware::dispenser::{DispenseOutcome as DeviceOutcome, DispenserError, Recovery};
use qrcash_io::link::LinkEvent;
use qrcash_protocol::keyset::HubTrust;
use qrcash_protocol::messages::{AtmDown, AtmUp, Heartbeat};
use qrcash_protocol::replay::SenderWindow;
use qrcash_protocol::{Clock, OrderId, TxId, topics};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};

use super::camera::CameraHealth;
use super::outbox::OutboxCmd;
use super::{AgentEvent, Sealer, SharedDispenser, crash_point, lock};
use crate::error::StoreError;
use crate::inbound::InboundVerifier;
use crate::session::{Action, Input, KnownOrder, Screen, Session};
use crate::store::{JournalKind, Outgoing, Priority, Store};

/// The core's inputs besides the session's own.
/// How often the running agent records that it runs (and hears the hub), in seconds.
pub(super) const LIVENESS_EVERY_S: u64 = 5;

pub(super) struct CoreInputs {
    pub link: mpsc::Receiver<LinkEvent>,
    pub scans: mpsc::Receiver<String>,
    pub done: mpsc::Receiver<DeviceDone>,
    pub stop: watch::Receiver<bool>,
}

/// What a dispenser job hands back, with the driver's typed errors.
#[derive(Debug)]
pub(super) enum DeviceDone {
    /// A dispense ended (and, when the device asked for it, recovery ran).
    Dispensed {
        order_id: OrderId,
        result: Result<DeviceOutcome, DispenserError>,
        recovery: Option<Result<Recovery, DispenserError>>,
    },
    /// A recovery the session asked for ended.
    Recovered(Result<Recovery, DispenserError>),
    /// The periodic status read ended (`Err` also for a driver that panicked).
    Checked(Result<(), String>),
}

pub(super) struct Core {
    pub session: Session,
    pub store: Store,
    pub sealer: Sealer,
    pub verifier: InboundVerifier,
    /// The hub's id (`iss` of its key set).
    pub hub_id: String,
    /// What this ATM trusts of the hub's keys.
    pub trust: HubTrust,
    /// The last key set refused, so a retained one refused again on every reconnection is
    /// journalled once.
    pub refused_key_set: Option<Vec<u8>>,
    /// The status figures last written, to write only changes.
    pub statuses: HashMap<String, String>,
    /// When liveness was last written.
    pub liveness_at: u64,
    /// When hearing from the hub was last written.
    pub hub_heard_at: u64,
    /// The camera thread's health.
    pub camera: Arc<Mutex<CameraHealth>>,
    pub clock: Arc<dyn Clock>,
    pub cassettes: Vec<u64>,
    pub events: broadcast::Sender<AgentEvent>,
    pub screen: watch::Sender<Screen>,
    pub outbox: mpsc::UnboundedSender<OutboxCmd>,
    pub dispenser: SharedDispenser,
    pub device: mpsc::Sender<DeviceDone>,
    pub link_up: bool,
    /// A periodic status read is running.
    pub checking: bool,
}

impl Core {
    pub(super) async fn run(
        mut self,
        mut inputs: CoreInputs,
        heartbeat: Duration,
        device_check: Duration,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut beat = tokio::time::interval(heartbeat);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + device_check, device_check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.show(self.initial_screen());
        let _ = self.outbox.send(OutboxCmd::Wake);
        loop {
            tokio::select! {
                _ = inputs.stop.changed() => {
                    self.record_liveness(true);
                    return;
                }
                ev = inputs.link.recv() => match ev {
                    None => return,
                    Some(LinkEvent::Up) => {
                        let _ = self.outbox.send(OutboxCmd::LinkUp);
                        self.link_up = true;
                        self.set_status("link", "up");
                        let _ = self.events.send(AgentEvent::Link { up: true });
                        self.apply(Input::Link(true));
                    }
                    Some(LinkEvent::Down) => {
                        let _ = self.outbox.send(OutboxCmd::LinkDown);
                        self.link_up = false;
                        self.set_status("link", "down");
                        let _ = self.events.send(AgentEvent::Link { up: false });
                        self.apply(Input::Link(false));
                    }
                    Some(LinkEvent::Message { topic, payload }) => {
                        self.inbound(&topic, &payload);
                    }
                },
                Some(text) = inputs.scans.recv() => {
                    self.apply(Input::CodeRead(text));
                }
                Some(done) = inputs.done.recv() => self.device_done(done),
                _ = tick.tick() => {
                    self.record_liveness(false);
                    self.apply(Input::Tick);
                }
                _ = beat.tick() => self.heartbeat(),
                _ = check.tick() => self.check_device(),
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

    /// Records a status figure and, when it changed, since when it holds (for `qrcash-agent
    /// status`, which reads the database from another process).
    fn set_status(&mut self, key: &str, value: &str) {
        if self.statuses.get(key).is_some_and(|v| v == value) {
            return;
        }
        match self.store.set_status_since(key, value, self.clock.now()) {
            Ok(()) => {
                self.statuses.insert(key.to_owned(), value.to_owned());
            }
            Err(e) => tracing::warn!(error = %e, key, "cannot record status"),
        }
    }

    /// Every [`LIVENESS_EVERY_S`] (and when stopping): that the agent runs, and the camera's
    /// health, so `qrcash-agent status` can tell live figures from stale ones.
    fn record_liveness(&mut self, stopping: bool) {
        let now = self.clock.now();
        if !stopping && now < self.liveness_at.saturating_add(LIVENESS_EVERY_S) {
            return;
        }
        if self.liveness_at == 0 && !stopping {
            // Running again: a stop recorded by an earlier run no longer applies.
            let _ = self.store.set_status_value("stopped_at", "");
        }
        self.liveness_at = now;
        let camera = crate::runtime::lock(&self.camera).clone();
        let camera = serde_json::to_string(&camera).unwrap_or_default();
        self.set_status("camera", &camera);
        let key = if stopping { "stopped_at" } else { "alive_at" };
        if let Err(e) = self.store.set_status_value(key, &now.to_string()) {
            tracing::warn!(error = %e, "cannot record liveness");
        }
    }

    /// A verified message from the hub arrived: the hub (not only the broker) is reachable.
    fn hub_heard(&mut self) {
        let now = self.clock.now();
        if now >= self.hub_heard_at.saturating_add(LIVENESS_EVERY_S) {
            self.hub_heard_at = now;
            if let Err(e) = self
                .store
                .set_status_value("hub_heard_at", &now.to_string())
            {
                tracing::warn!(error = %e, "cannot record status");
            }
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

    /// Feeds `input` to the session and carries out its actions; the results they produce
    /// are fed back once the whole batch of actions is carried out, in order, until the
    /// session has nothing more to do.
    fn apply(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let now = self.clock.now();
            let actions = self.session.handle(input, now);
            self.set_status("state", &format!("{:?}", self.session.atm_state()));
            for action in actions {
                inputs.extend(self.act(action));
            }
        }
    }

    /// Carries out one action; what it produced, for the session.
    fn act(&mut self, action: Action) -> Option<Input> {
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
                        return Some(Input::QueueFailed { jti });
                    }
                }
            }
            Action::LookUpOrder { jti, order } => {
                let known = match self.store.order(order.order_id) {
                    Ok(None) => KnownOrder::New,
                    Ok(Some(rec)) => KnownOrder::Started {
                        stored: Box::new(rec.order),
                        report: rec.report.map(Box::new),
                    },
                    Err(e) => {
                        // Unknown is not "new": without the journal nothing is dispensed.
                        tracing::error!(error = %e, order = %order.order_id, "cannot check the order; not executing it");
                        return None;
                    }
                };
                return Some(Input::OrderLookedUp { jti, order, known });
            }
            Action::WriteAhead { order } => {
                crash_point("before_write_ahead");
                let now = self.clock.now();
                let detail = json!({ "amount": order.amount, "notes": order.notes });
                let result = self.store.begin_dispense(&order, now, None, detail);
                if let Err(e) = &result {
                    tracing::error!(error = %e, order = %order.order_id, "write-ahead failed: not dispensing");
                } else {
                    let _ = self.events.send(AgentEvent::Journal {
                        kind: JournalKind::DispenseStarted,
                        tx_id: Some(order.tx_id),
                        order_id: Some(order.order_id),
                    });
                    crash_point("after_write_ahead");
                }
                return Some(Input::WriteAheadDone {
                    order_id: order.order_id,
                    result: result.map_err(|e| e.to_string()),
                });
            }
            Action::RunDevice { order_id, request } => {
                let d = self.dispenser.clone();
                let done = self.device.clone();
                tokio::task::spawn_blocking(move || {
                    let mut dev = lock(&d);
                    let result = dev.dispense(&order_id.to_string(), &request);
                    let recovery = match &result {
                        Ok(o) if o.needs_recovery() => Some(dev.recover_last()),
                        _ => None,
                    };
                    drop(dev);
                    let _ = done.blocking_send(DeviceDone::Dispensed {
                        order_id,
                        result,
                        recovery,
                    });
                });
            }
            Action::Record { report, detail } => {
                let now = self.clock.now();
                let sealer = self.sealer.clone();
                let msg = AtmUp::DispenseReport(report.clone());
                let result = self.store.finish_dispense(&report, detail, now, |s| {
                    sealer.seal(None, s, now, msg, None)
                });
                let result = match result {
                    Ok(out) => {
                        crash_point("after_report_queued");
                        let _ = self.events.send(AgentEvent::Journal {
                            kind: JournalKind::Reported,
                            tx_id: Some(report.tx_id),
                            order_id: Some(report.order_id),
                        });
                        self.queued(&out);
                        tracing::info!(order = %report.order_id, outcome = ?report.outcome, dispensed = %report.dispensed, "dispense reported");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                return Some(Input::Recorded {
                    order_id: report.order_id,
                    result,
                });
            }
            Action::Dispensed(report) => {
                let _ = self.events.send(AgentEvent::Dispensed(report));
            }
            Action::SaveWindow(w) => self.save_window(w),
            Action::ApplyAck { ids, window } => {
                crash_point("before_applying_ack");
                match self.store.ack_with_window(&ids, self.clock.now(), window) {
                    Ok(removed) => {
                        for (jti, kind) in removed {
                            let _ = self.events.send(AgentEvent::Delivered { jti, kind });
                        }
                        let _ = self.outbox.send(OutboxCmd::Wake);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot apply an ack"),
                }
            }
            Action::DeadLetter {
                re,
                reason,
                message,
            } => {
                match self
                    .store
                    .dead_letter(&re, &reason, &message, self.clock.now())
                {
                    Ok(true) => {
                        let _ = self.events.send(AgentEvent::DeadLettered { jti: re });
                        let _ = self.outbox.send(OutboxCmd::Wake);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot move a message to dead letters"),
                }
            }
            Action::Recover => {
                let d = self.dispenser.clone();
                let done = self.device.clone();
                tokio::task::spawn_blocking(move || {
                    let r = lock(&d).recover_last();
                    let _ = done.blocking_send(DeviceDone::Recovered(r));
                });
            }
        }
        None
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

    /// Reads the dispenser's status off the core's task, when the session wants it and no
    /// read is running yet.
    fn check_device(&mut self) {
        if self.checking || !self.session.wants_device_check() {
            return;
        }
        self.checking = true;
        let d = self.dispenser.clone();
        let done = self.device.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside the driver must not leave `checking` set for ever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lock(&d).status()))
                .map_err(|_| "the dispenser driver panicked".to_owned())
                .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
            let _ = done.blocking_send(DeviceDone::Checked(r));
        });
    }

    /// A dispenser job ended: its result goes to the session.
    fn device_done(&mut self, done: DeviceDone) {
        match done {
            DeviceDone::Checked(r) => {
                self.checking = false;
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "the dispenser does not answer");
                }
                self.apply(Input::DeviceChecked(
                    r.map(|_| ()).map_err(|e| e.to_string()),
                ));
            }
            DeviceDone::Dispensed {
                order_id,
                result,
                recovery,
            } => {
                crash_point("after_device_outcome");
                let detail = json!({
                    "device": match &result { Ok(o) => json!(o), Err(e) => json!({ "error": e.to_string() }) },
                    "recovery": recovery.as_ref().map(|r| match r {
                        Ok(r) => json!({ "purged": r.purged, "machine_clear": r.machine_clear() }),
                        Err(e) => json!({ "error": e.to_string() }),
                    }),
                });
                let machine_clear = match &recovery {
                    None => true,
                    Some(Ok(r)) => r.machine_clear(),
                    Some(Err(_)) => false,
                };
                self.apply(Input::DeviceDone {
                    order_id,
                    result: result.map_err(|e| e.to_string()),
                    machine_clear,
                    detail,
                });
            }
            DeviceDone::Recovered(r) => match r {
                Ok(r) if r.machine_clear() => self.apply(Input::MachineClear),
                Ok(_) => {
                    tracing::error!("dispenser still not clear after recovery: operator needed")
                }
                Err(e) => {
                    tracing::error!(error = %e, "dispenser recovery failed: tried again once the device answers");
                    self.apply(Input::RecoveryFailed);
                }
            },
        }
    }

    /// The hub's retained key set (`docs/protocol.md` §3, "The hub's key set"): applied to
    /// what this ATM trusts, kept and journalled when it changed something; refused (and
    /// journalled once) when it is older than the newest applied or not endorsed by a key
    /// this ATM trusts.
    fn hub_key_set(&mut self, payload: &[u8]) {
        let now = self.clock.now();
        let mut trust = self.trust.clone();
        let change = match trust.apply(payload, &self.hub_id) {
            Ok(change) => change,
            Err(e) => {
                tracing::warn!(error = %e, "hub key set refused");
                if self.refused_key_set.as_deref() != Some(payload) {
                    self.refused_key_set = Some(payload.to_vec());
                    self.journal(
                        JournalKind::InboundRejected,
                        None,
                        None,
                        json!({ "error": e.to_string(), "topic": topics::HUB_KEYS }),
                    );
                }
                let _ = self.events.send(AgentEvent::InboundRejected {
                    error: e.to_string(),
                });
                return;
            }
        };
        if change.is_empty() {
            return;
        }
        if let Err(e) = self.store.save_hub_trust(&trust, &change, now) {
            tracing::error!(error = %e, "cannot keep the hub's key set: not applied");
            return;
        }
        tracing::info!(
            added = ?change.added.iter().map(|k| k.kid().to_string()).collect::<Vec<_>>(),
            dropped = ?change.dropped,
            current = ?change.current.as_ref().map(|k| k.kid().to_string()),
            "hub key set applied"
        );
        self.trust = trust;
        self.verifier.set_keys(self.trust.message_keys());
        self.apply(Input::HubCodeKeys(self.trust.code_keys()));
        let _ = self.events.send(AgentEvent::Journal {
            kind: JournalKind::HubKey,
            tx_id: None,
            order_id: None,
        });
    }

    fn inbound(&mut self, topic: &str, payload: &[u8]) {
        if topic == topics::HUB_KEYS {
            return self.hub_key_set(payload);
        }
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
        self.hub_heard();
        if let AtmDown::Rejected(r) = &claims.msg {
            match &claims.re {
                Some(re) => {
                    tracing::warn!(re = %re, reason = ?r.reason, message = %r.message, "hub refused a message")
                }
                None => {
                    tracing::warn!(reason = ?r.reason, message = %r.message, "hub refusal without re")
                }
            }
        }
        self.apply(Input::Received {
            jti: claims.jti,
            re: claims.re,
            msg: claims.msg,
            window: next,
        });
    }

    fn save_window(&mut self, w: SenderWindow) {
        if let Err(e) = self.store.save_hub_window(w) {
            tracing::error!(error = %e, "cannot save the hub replay window");
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
        // The kept counts (`store::cassettes`): a count a technician set while the agent ran
        // is in the next heartbeat.
        let kept = match self.store.cassette_counts() {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cassette counts");
                return;
            }
        };
        let hb = Heartbeat {
            state: self.session.atm_state(),
            cassettes: super::heartbeat_cassettes(&self.cassettes, &kept),
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
