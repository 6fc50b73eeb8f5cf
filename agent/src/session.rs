//! The customer session as a pure state machine: one transaction at a time, from a code
//! read by the camera to the end of the dispense. No I/O (beyond `tracing` logs), no clock:
//! inputs carry the time,
//! outputs are [`Action`]s the shell (`runtime`) carries out (show, journal, send, look an
//! order up, write ahead, run the device, record) and whose results come back as inputs.
//! The session owns the order's [`DispenseSequence`], so the write-ahead rule is decided here
//! and nowhere else.
//!
//! ```text
//! Idle --valid code, link up--> Presented --AwaitConfirmation--> AwaitingConfirmation
//!   ^                              |                                  |
//!   |   timeout / Abort / refusal  |                                  | DispenseOrder (verified)
//!   +------------------------------+----------------------------------+--> Dispensing
//!   +-------------------------------- dispense finished ------------------------+
//! ```
//!
//! Safety rules enforced here: an order is executed only if it names this ATM, the
//! transaction presented at this ATM right now, an unexpired deadline, the ATM's currency
//! and notes that add up to the amount and exist in the cassettes. Anything else is
//! answered with `OrderRefused`, so the hub releases the hold. Signature, addressing and
//! replay checks of hub messages happen before (`inbound`). "Order already started" is
//! decided here too, from the journal entry the shell looked up on the session's request:
//! at most one dispense per order id, ever; a repeat of a finished order gets its stored
//! report again, and an order that was started is never refused (notes may have left).
//!
//! One order's dispense, after it passed the checks:
//!
//! ```text
//! DispenseOrder --> LookUpOrder --new--> WriteAhead --done--> RunDevice --device answered-->
//!     Record --recorded--> TakeCash (Idle, or OutOfService + Recover)
//! ```
//!
//! A result that does not fit the sequence's step is a bug in the shell: it fails a
//! `debug_assert!` and takes the ATM out of service rather than being ignored.

use std::collections::VecDeque;
use std::time::Duration;

use qrcash_hardware::dispenser::{DispenseOutcome as DeviceOutcome, DispenseRequest};
use qrcash_protocol::messages::{
    AbortReason, AtmDown, AtmState, AtmUp, CancelReason, CodePresented, DispenseOrder,
    DispenseOutcome, DispenseReport, OrderRefused, RejectReason, SessionCancelled,
};
use qrcash_protocol::token::{self, CodeToken};
use qrcash_protocol::{Amount, Currency, OrderId, PublicKey, SenderWindow, TxId};
use serde::Serialize;
use serde_json::json;

use crate::dispense::{self, DispenseSequence, Happened, Next, report_for, request_for};
use crate::store::{JournalKind, Priority};

/// What the session needs to know about this ATM.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This ATM's id.
    pub atm_id: String,
    /// The currency its cassettes hold.
    pub currency: Currency,
    /// Denomination of each cassette, position order (index 0 = cassette 1).
    pub cassettes: Vec<u64>,
    /// Trusted hub keys for codes (several during a key rotation).
    pub hub_keys: Vec<PublicKey>,
    /// How long to wait for the hub's `AwaitConfirmation` after presenting a code.
    pub present_timeout: Duration,
    /// How long after the confirmation deadline an order is still awaited.
    pub confirm_grace: Duration,
    /// The same code seen again within this time is the same presentation.
    pub rescan_quiet: Duration,
}

/// What the ATM's screen shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "screen", rename_all = "snake_case")]
pub enum Screen {
    /// Ready for a code.
    Idle,
    /// The hub cannot be reached: codes cannot be used right now.
    ServiceUnavailable,
    /// The code was refused.
    CodeRefused {
        /// Why.
        reason: String,
    },
    /// The code was sent to the hub.
    PleaseWait,
    /// The customer must confirm on the phone.
    ConfirmOnPhone {
        /// The amount.
        amount: Amount,
        /// Deadline, Unix seconds.
        confirm_by: u64,
    },
    /// Paying out.
    Dispensing {
        /// The amount.
        amount: Amount,
    },
    /// Done.
    TakeCash {
        /// What left the machine.
        dispensed: Amount,
        /// How it ended.
        outcome: DispenseOutcome,
    },
    /// The session ended without cash.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The ATM cannot serve.
    OutOfService {
        /// Why.
        reason: String,
    },
}

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No transaction.
    Idle,
    /// `CodePresented` queued; waiting for the hub.
    Presented {
        /// The transaction.
        tx_id: TxId,
        /// The `jti` of the `CodePresented` message.
        jti: String,
        /// When, Unix seconds.
        since: u64,
    },
    /// The hub is waiting for the phone.
    AwaitingConfirmation {
        /// The transaction.
        tx_id: TxId,
        /// The `jti` of the `CodePresented` message.
        jti: String,
        /// The amount.
        amount: Amount,
        /// The deadline, Unix seconds.
        confirm_by: u64,
    },
    /// An order is being executed.
    Dispensing {
        /// The order.
        order_id: OrderId,
        /// Its transaction.
        tx_id: TxId,
    },
    /// Not serving (machine not clear, operator needed).
    OutOfService {
        /// Why.
        reason: String,
    },
}

/// An input to the session.
#[derive(Debug, Clone)]
pub enum Input {
    /// The camera decoded this text.
    CodeRead(String),
    /// A message from the hub that passed every check (`crate::inbound`), with the hub's
    /// replay window that records it. The session decides when the window is saved
    /// ([`Action::SaveWindow`], [`Action::ApplyAck`]) and hands the message on as
    /// [`Input::Down`] or [`Input::SendRefused`].
    Received {
        /// Its `jti`.
        jti: String,
        /// The hub message it answers, if any.
        re: Option<String>,
        /// The message.
        msg: AtmDown,
        /// The replay window with this message's `seq` recorded.
        window: SenderWindow,
    },
    /// A verified message from the hub, with its `jti`.
    Down {
        /// Its `jti` (answers set `re` to it).
        jti: String,
        /// The message.
        msg: AtmDown,
    },
    /// The hub refused one of our messages (`re`).
    SendRefused {
        /// The refused message's `jti`.
        re: String,
        /// Why.
        reason: RejectReason,
    },
    /// A message could not be queued (outbox full).
    QueueFailed {
        /// Its `jti`.
        jti: String,
    },
    /// What the journal knows of an order the session asked about ([`Action::LookUpOrder`]).
    OrderLookedUp {
        /// The `jti` of the order message.
        jti: String,
        /// The order as received.
        order: DispenseOrder,
        /// Whether it was ever started here.
        known: KnownOrder,
    },
    /// The write-ahead record of the session's order is committed (or could not be).
    WriteAheadDone {
        /// The order.
        order_id: OrderId,
        /// `Err` with why the record could not be written: nothing was dispensed.
        result: Result<(), String>,
    },
    /// The dispenser answered for the session's order.
    DeviceDone {
        /// The order.
        order_id: OrderId,
        /// The device's count, or the driver's promise that nothing moved (`Err`).
        result: Result<DeviceOutcome, String>,
        /// Whether the machine is clear for the next customer (after any recovery).
        machine_clear: bool,
        /// What the device and any recovery said, for the journal.
        detail: serde_json::Value,
    },
    /// The outcome and its report are committed (or could not be).
    Recorded {
        /// The order.
        order_id: OrderId,
        /// `Err` with why the record could not be written.
        result: Result<(), String>,
    },
    /// Recovery left the machine clear again.
    MachineClear,
    /// The periodic status read of the dispenser ([`Session::wants_device_check`]) ended:
    /// `Err` with why the device did not answer.
    DeviceChecked(Result<(), String>),
    /// A recovery ([`Action::Recover`]) could not reach the device.
    RecoveryFailed,
    /// The broker connection went up or down.
    Link(bool),
    /// The hub's key set changed what may sign QR codes (already kept by the shell): these
    /// keys from now on.
    HubCodeKeys(Vec<PublicKey>),
    /// Time passes.
    Tick,
}

/// What the journal knows of an order id.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownOrder {
    /// Never started here.
    New,
    /// Started before: journalled as dispensing, with its report if the outcome was recorded.
    Started {
        /// The order as journalled when it started.
        stored: Box<DispenseOrder>,
        /// The report committed with the outcome; `None` while the outcome is unknown.
        report: Option<Box<DispenseReport>>,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Update the screen / status output.
    Show(Screen),
    /// Append to the electronic journal.
    Journal {
        /// What.
        kind: JournalKind,
        /// The transaction.
        tx_id: Option<TxId>,
        /// The order.
        order_id: Option<OrderId>,
        /// Details.
        detail: serde_json::Value,
    },
    /// Seal with this `jti` and queue in the outbox.
    Send {
        /// The `jti` to use.
        jti: String,
        /// The message.
        msg: AtmUp,
        /// The hub message it answers.
        re: Option<String>,
        /// Outbox priority.
        priority: Priority,
    },
    /// Look the order up in the journal and answer with [`Input::OrderLookedUp`].
    LookUpOrder {
        /// The `jti` of the order message.
        jti: String,
        /// The order.
        order: DispenseOrder,
    },
    /// Commit the write-ahead record ("dispensing") for this order, then answer with
    /// [`Input::WriteAheadDone`]. Nothing may reach the dispenser before it is on disk.
    WriteAhead {
        /// The order.
        order: DispenseOrder,
    },
    /// Run the dispenser; answer with [`Input::DeviceDone`] when it returns.
    RunDevice {
        /// The order.
        order_id: OrderId,
        /// Its cassette mapping.
        request: DispenseRequest,
    },
    /// Commit the outcome and queue the report for the hub, then answer with
    /// [`Input::Recorded`].
    Record {
        /// The report.
        report: DispenseReport,
        /// The journal's detail of what the device said.
        detail: serde_json::Value,
    },
    /// Tell observers how an order ended (the report, committed or not).
    Dispensed(DispenseReport),
    /// Run dispenser recovery (status, purge).
    Recover,
    /// Persist the hub's replay window (the message it records is then never accepted
    /// again).
    SaveWindow(SenderWindow),
    /// Remove the acknowledged messages from the outbox and persist the window, in one
    /// transaction. An ack is applied *before* its `seq` counts as seen: applying it twice
    /// is harmless, and a crash in between must leave the ack acceptable again, because the
    /// hub answers the resent message with the very same sealed ack.
    ApplyAck {
        /// The acknowledged `jti`s.
        ids: Vec<String>,
        /// The window.
        window: SenderWindow,
    },
    /// Move the refused message `re` out of the outbox into the dead letters: the hub will
    /// never take it.
    DeadLetter {
        /// The refused message's `jti`.
        re: String,
        /// Why.
        reason: RejectReason,
        /// The hub's explanation.
        message: String,
    },
}

/// The order the session is dispensing.
#[derive(Debug)]
struct ActiveDispense {
    seq: DispenseSequence,
    /// Whether the machine is clear for the next customer, once the device has answered.
    machine_clear: Option<bool>,
}

/// Why a dispense step was not taken.
enum StepRefused {
    /// The result names another order than the one being dispensed: ignored.
    OtherOrder,
    /// The result does not fit the sequence's step: a bug in the shell.
    OutOfOrder,
}

/// How many answered transactions [`Session`] remembers.
const ANSWERED_KEPT: usize = 64;

/// Recent codes the camera read, so that a showing is acted on once: a camera sees the same
/// code on many frames.
#[derive(Default)]
struct RecentCodes {
    /// The last code acted on (presented, or refused as invalid) and when (Unix seconds):
    /// quiet for the quiet time whatever happens.
    served: Option<(String, u64)>,
    /// The last code read while the ATM could not serve it (out of service, hub
    /// unreachable, another customer's session): quiet only while the ATM still cannot,
    /// and read again on the first frame after it can.
    held: Option<(String, u64)>,
}

impl RecentCodes {
    fn quiet(seen: &Option<(String, u64)>, text: &str, now: u64, quiet: u64) -> bool {
        seen.as_ref()
            .is_some_and(|(t, at)| t == text && now < at.saturating_add(quiet))
    }
}

/// The session state machine.
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    /// The order being dispensed (phase `Dispensing`).
    dispense: Option<ActiveDispense>,
    link_up: bool,
    codes: RecentCodes,
    /// Transactions whose presentation the hub answered (asked for the confirmation or
    /// refused the code), newest last: their code is never presented again (a photo of a
    /// used code left in front of the camera would otherwise be presented every quiet time).
    answered: VecDeque<TxId>,
    /// Out of service because of the dispenser (not answering, or not clear): a device
    /// that answers again is recovered and, once clear, back in service.
    device_fault: bool,
    /// A recovery is due as soon as the device answers: it went silent, or the start-up
    /// recovery failed. (A recovery that ran and left the machine unclear is not retried:
    /// a jam needs an operator, not a purge every few seconds.)
    recover_pending: bool,
    /// The last device check found the dispenser silent: an order that arrives meanwhile
    /// (its customer's session began before the answer) is refused before anything is
    /// written ahead, rather than sent to a device that would leave it in doubt.
    device_silent: bool,
    new_jti: Box<dyn FnMut() -> String + Send>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase)
            .field("link_up", &self.link_up)
            .finish_non_exhaustive()
    }
}

fn journal(
    kind: JournalKind,
    tx_id: Option<TxId>,
    order_id: Option<OrderId>,
    detail: serde_json::Value,
) -> Action {
    Action::Journal {
        kind,
        tx_id,
        order_id,
        detail,
    }
}

impl Session {
    /// A session machine in `Idle`, link down; `new_jti` makes message ids (injected so tests
    /// are deterministic).
    pub fn new(cfg: SessionConfig, new_jti: Box<dyn FnMut() -> String + Send>) -> Self {
        Session {
            cfg,
            phase: Phase::Idle,
            dispense: None,
            link_up: false,
            codes: RecentCodes::default(),
            answered: VecDeque::new(),
            device_fault: false,
            recover_pending: false,
            device_silent: false,
            new_jti,
        }
    }

    /// Starts out of service (e.g. recovery could not clear the machine).
    pub fn set_out_of_service(&mut self, reason: String) {
        self.phase = Phase::OutOfService { reason };
    }

    /// Starts out of service because of the dispenser. `answered` says whether the start-up
    /// recovery reached it: if not, a recovery runs once the periodic check finds it
    /// answering; if it did and left the machine unclear (a jam), an operator must act.
    pub fn set_device_out_of_service(&mut self, reason: String, answered: bool) {
        self.set_out_of_service(reason);
        self.device_fault = true;
        self.recover_pending = !answered;
    }

    /// Whether the shell should read the dispenser's status now: while nobody is being
    /// served (to notice a device that stopped answering), and while out of service because
    /// of the device (to notice it answering again). Never during a customer's session.
    pub fn wants_device_check(&self) -> bool {
        match self.phase {
            Phase::Idle => true,
            Phase::OutOfService { .. } => self.device_fault,
            _ => false,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The phase as the heartbeat reports it.
    pub fn atm_state(&self) -> AtmState {
        match self.phase {
            Phase::Idle => AtmState::Idle,
            Phase::Presented { .. } | Phase::AwaitingConfirmation { .. } => {
                AtmState::AwaitingConfirmation
            }
            Phase::Dispensing { .. } => AtmState::Dispensing,
            Phase::OutOfService { .. } => AtmState::OutOfService,
        }
    }

    /// The session's transaction, if any.
    pub fn current_tx(&self) -> Option<TxId> {
        match &self.phase {
            Phase::Presented { tx_id, .. }
            | Phase::AwaitingConfirmation { tx_id, .. }
            | Phase::Dispensing { tx_id, .. } => Some(*tx_id),
            _ => None,
        }
    }

    fn idle_screen(&self) -> Screen {
        if self.link_up {
            Screen::Idle
        } else {
            Screen::ServiceUnavailable
        }
    }

    /// Applies one input at time `now` (Unix seconds).
    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Action> {
        match input {
            Input::CodeRead(text) => self.code_read(text, now),
            Input::Received {
                jti,
                re,
                msg,
                window,
            } => self.received(jti, re, msg, window),
            Input::Down { jti, msg } => self.down(jti, msg),
            Input::SendRefused { re, reason } => self.refused(&re, &reason),
            Input::QueueFailed { jti } => self.queue_failed(&jti),
            Input::OrderLookedUp { jti, order, known } => match known {
                KnownOrder::New => self.order(jti, order, now),
                KnownOrder::Started { stored, report } => {
                    self.repeated(jti, &stored, report.map(|r| *r))
                }
            },
            Input::WriteAheadDone { order_id, result } => self.written_ahead(order_id, result),
            Input::DeviceDone {
                order_id,
                result,
                machine_clear,
                detail,
            } => self.device_done(order_id, result, machine_clear, detail),
            Input::Recorded { order_id, result } => self.recorded(order_id, result),
            Input::MachineClear => {
                self.device_fault = false;
                self.recover_pending = false;
                if matches!(self.phase, Phase::OutOfService { .. }) {
                    self.phase = Phase::Idle;
                    return vec![Action::Show(self.idle_screen())];
                }
                vec![]
            }
            Input::DeviceChecked(result) => self.device_checked(result),
            Input::RecoveryFailed => self.recovery_failed(),
            Input::Link(up) => {
                let changed = self.link_up != up;
                self.link_up = up;
                if changed && self.phase == Phase::Idle {
                    vec![Action::Show(self.idle_screen())]
                } else {
                    vec![]
                }
            }
            Input::HubCodeKeys(keys) => {
                self.cfg.hub_keys = keys;
                vec![]
            }
            Input::Tick => self.tick(now),
        }
    }

    fn code_read(&mut self, text: String, now: u64) -> Vec<Action> {
        if !token::looks_like_token(&text) {
            return vec![];
        }
        // A camera sees the same code on many frames: one presentation per showing.
        let quiet = self.cfg.rescan_quiet.as_secs();
        let can_serve = self.phase == Phase::Idle && self.link_up;
        if RecentCodes::quiet(&self.codes.served, &text, now, quiet)
            || (!can_serve && RecentCodes::quiet(&self.codes.held, &text, now, quiet))
        {
            return vec![];
        }
        let token = CodeToken::verify(&text, &self.cfg.hub_keys, now);
        if can_serve || token.is_err() {
            self.codes.served = Some((text.clone(), now));
        } else {
            self.codes.held = Some((text.clone(), now));
        }
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                let mut out = vec![journal(
                    JournalKind::CodeRejected,
                    None,
                    None,
                    json!({ "error": e.to_string() }),
                )];
                if self.current_tx().is_none() {
                    out.push(Action::Show(Screen::CodeRefused {
                        reason: e.to_string(),
                    }));
                }
                return out;
            }
        };
        if self.answered.contains(&token.tx_id) {
            return vec![];
        }
        match &self.phase {
            Phase::Idle => {}
            Phase::OutOfService { reason } => {
                return vec![Action::Show(Screen::OutOfService {
                    reason: reason.clone(),
                })];
            }
            // One transaction at a time: a code shown during a session is ignored.
            _ => return vec![],
        }
        let tx = token.tx_id;
        if !self.link_up {
            return vec![
                journal(
                    JournalKind::CodeRead,
                    Some(tx),
                    None,
                    json!({ "presented": false, "why": "hub unreachable" }),
                ),
                Action::Show(Screen::ServiceUnavailable),
            ];
        }
        let jti = (self.new_jti)();
        self.phase = Phase::Presented {
            tx_id: tx,
            jti: jti.clone(),
            since: now,
        };
        vec![
            journal(
                JournalKind::CodeRead,
                Some(tx),
                None,
                json!({ "expires_at": token.expires_at }),
            ),
            Action::Send {
                jti: jti.clone(),
                msg: AtmUp::CodePresented(CodePresented { token: text }),
                re: None,
                priority: Priority::Normal,
            },
            journal(
                JournalKind::Presented,
                Some(tx),
                None,
                json!({ "jti": jti }),
            ),
            Action::Show(Screen::PleaseWait),
        ]
    }

    /// A verified hub message: when its window is saved, and what it means.
    fn received(
        &mut self,
        jti: String,
        re: Option<String>,
        msg: AtmDown,
        window: SenderWindow,
    ) -> Vec<Action> {
        match msg {
            AtmDown::Ack(ack) => vec![Action::ApplyAck {
                ids: ack.ids,
                window,
            }],
            AtmDown::Rejected(r) => {
                // An enrolment's refusal names an `Enrol`, which never sits in the outbox: a
                // stranger's enrolment reusing one of our `jti`s must not dead-letter it.
                let re = re.filter(|_| r.reason != RejectReason::EnrolmentRefused);
                let Some(re) = re else {
                    // A refusal of nothing of ours: only its `seq` is recorded.
                    return vec![Action::SaveWindow(window)];
                };
                let mut actions = Vec::new();
                if r.reason.is_permanent() {
                    actions.push(Action::DeadLetter {
                        re: re.clone(),
                        reason: r.reason.clone(),
                        message: r.message,
                    });
                }
                actions.push(Action::SaveWindow(window));
                actions.extend(self.refused(&re, &r.reason));
                actions
            }
            msg => {
                let mut actions = vec![Action::SaveWindow(window)];
                actions.extend(self.down(jti, msg));
                actions
            }
        }
    }

    fn down(&mut self, jti: String, msg: AtmDown) -> Vec<Action> {
        match msg {
            AtmDown::AwaitConfirmation(a) => match &self.phase {
                Phase::Presented { tx_id, jti: pj, .. }
                | Phase::AwaitingConfirmation { tx_id, jti: pj, .. }
                    if *tx_id == a.tx_id =>
                {
                    self.phase = Phase::AwaitingConfirmation {
                        tx_id: a.tx_id,
                        jti: pj.clone(),
                        amount: a.amount,
                        confirm_by: a.confirm_by,
                    };
                    self.hub_answered(a.tx_id);
                    vec![
                        journal(
                            JournalKind::AwaitConfirmation,
                            Some(a.tx_id),
                            None,
                            json!({ "amount": a.amount, "confirm_by": a.confirm_by }),
                        ),
                        Action::Show(Screen::ConfirmOnPhone {
                            amount: a.amount,
                            confirm_by: a.confirm_by,
                        }),
                    ]
                }
                _ => vec![],
            },
            // At most one dispense per order id, ever: the journal is asked first.
            AtmDown::DispenseOrder(order) => vec![Action::LookUpOrder { jti, order }],
            AtmDown::Abort(a) => match &self.phase {
                Phase::Presented { tx_id, .. } | Phase::AwaitingConfirmation { tx_id, .. }
                    if *tx_id == a.tx_id =>
                {
                    self.phase = Phase::Idle;
                    vec![
                        journal(
                            JournalKind::SessionEnded,
                            Some(a.tx_id),
                            None,
                            json!({ "why": "aborted by the hub", "reason": a.reason }),
                        ),
                        Action::Show(Screen::Cancelled {
                            reason: abort_text(a.reason).into(),
                        }),
                    ]
                }
                Phase::Dispensing { tx_id, .. } if *tx_id == a.tx_id => vec![journal(
                    JournalKind::SessionEnded,
                    Some(a.tx_id),
                    None,
                    json!({ "why": "abort ignored: already dispensing", "reason": a.reason }),
                )],
                _ => vec![],
            },
            // Acks and refusals concern the outbox; the shell handles them. An enrolment
            // answer concerns `qrcash-agent enrol`, which reads it itself: a running agent has
            // nothing to do with it.
            AtmDown::Ack(_) | AtmDown::Rejected(_) | AtmDown::Enrolled(_) => vec![],
        }
    }

    fn order(&mut self, jti: String, order: DispenseOrder, now: u64) -> Vec<Action> {
        let session_tx = match &self.phase {
            Phase::Presented { tx_id, .. } | Phase::AwaitingConfirmation { tx_id, .. } => {
                Some(*tx_id)
            }
            _ => None,
        };
        let check = || -> Result<DispenseRequest, String> {
            if order.atm_id != self.cfg.atm_id {
                return Err(format!("order is for ATM {}, not this one", order.atm_id));
            }
            if session_tx != Some(order.tx_id) {
                return Err("not the transaction presented at this ATM".into());
            }
            if now >= order.expires_at {
                return Err(format!("order expired {} s ago", now - order.expires_at));
            }
            if order.amount.currency != self.cfg.currency {
                return Err(format!(
                    "this ATM pays {}, not {}",
                    self.cfg.currency, order.amount.currency
                ));
            }
            if !order.notes_match_amount() {
                return Err("notes do not add up to the amount".into());
            }
            if self.device_silent {
                return Err("the dispenser does not answer".into());
            }
            request_for(&order, &self.cfg.cassettes)
        };
        match check() {
            Ok(request) => {
                self.phase = Phase::Dispensing {
                    order_id: order.order_id,
                    tx_id: order.tx_id,
                };
                let mut out = vec![
                    journal(
                        JournalKind::OrderReceived,
                        Some(order.tx_id),
                        Some(order.order_id),
                        json!({ "amount": order.amount, "notes": order.notes, "jti": jti }),
                    ),
                    Action::Show(Screen::Dispensing {
                        amount: order.amount,
                    }),
                ];
                let seq = DispenseSequence::new(order, request, self.cfg.cassettes.clone());
                debug_assert_eq!(seq.next(), Next::WriteAhead);
                out.push(Action::WriteAhead {
                    order: seq.order().clone(),
                });
                self.dispense = Some(ActiveDispense {
                    seq,
                    machine_clear: None,
                });
                out
            }
            Err(reason) => {
                let mut out = vec![
                    journal(
                        JournalKind::OrderRefused,
                        Some(order.tx_id),
                        Some(order.order_id),
                        json!({ "reason": reason }),
                    ),
                    Action::Send {
                        jti: (self.new_jti)(),
                        msg: AtmUp::OrderRefused(OrderRefused {
                            order_id: order.order_id,
                            tx_id: order.tx_id,
                            reason: reason.clone(),
                        }),
                        re: Some(jti),
                        priority: Priority::Critical,
                    },
                ];
                // A bad order for our own session ends it: the hub releases the hold.
                if session_tx == Some(order.tx_id) {
                    self.phase = Phase::Idle;
                    out.push(Action::Show(Screen::Cancelled { reason }));
                }
                out
            }
        }
    }

    fn refused(&mut self, re: &str, reason: &RejectReason) -> Vec<Action> {
        match &self.phase {
            Phase::Presented { tx_id, jti, .. }
            | Phase::AwaitingConfirmation { tx_id, jti, .. }
                if jti == re =>
            {
                let tx = *tx_id;
                self.phase = Phase::Idle;
                self.hub_answered(tx);
                vec![
                    journal(
                        JournalKind::SessionEnded,
                        Some(tx),
                        None,
                        json!({ "why": "code refused by the hub", "reason": reason }),
                    ),
                    Action::Show(Screen::CodeRefused {
                        reason: refusal_text(reason),
                    }),
                ]
            }
            _ => vec![],
        }
    }

    /// Notes that the hub answered the presentation of `tx` (at most the last 64 are kept:
    /// a code is shown to one ATM for a minute or two, not across a day of customers).
    fn hub_answered(&mut self, tx: TxId) {
        if !self.answered.contains(&tx) {
            if self.answered.len() == ANSWERED_KEPT {
                self.answered.pop_front();
            }
            self.answered.push_back(tx);
        }
    }

    fn queue_failed(&mut self, jti: &str) -> Vec<Action> {
        match &self.phase {
            Phase::Presented { tx_id, jti: pj, .. } if pj == jti => {
                let tx = *tx_id;
                self.phase = Phase::Idle;
                vec![
                    journal(
                        JournalKind::SessionEnded,
                        Some(tx),
                        None,
                        json!({ "why": "outbox full" }),
                    ),
                    Action::Show(Screen::ServiceUnavailable),
                ]
            }
            _ => vec![],
        }
    }

    /// An order that was started before: never dispensed again, never refused.
    fn repeated(
        &mut self,
        jti: String,
        order: &DispenseOrder,
        report: Option<DispenseReport>,
    ) -> Vec<Action> {
        let in_progress = self
            .dispense
            .as_ref()
            .is_some_and(|d| d.seq.order().order_id == order.order_id);
        tracing::warn!(order = %order.order_id, in_progress, "order already started: not dispensing again");
        let mut out = vec![journal(
            JournalKind::OrderRefused,
            Some(order.tx_id),
            Some(order.order_id),
            json!({ "reason": "already started", "in_progress": in_progress }),
        )];
        if in_progress {
            // Its report follows when the device answers.
            return out;
        }
        match report {
            // The stored report again, in answer to the repeat.
            Some(report) => out.push(Action::Send {
                jti: (self.new_jti)(),
                msg: AtmUp::DispenseReport(report),
                re: Some(jti),
                priority: Priority::Critical,
            }),
            // Journalled as dispensing without an outcome: notes may have left. Recovery (the
            // next start) reports it in doubt; until then the hub keeps the hold.
            None => {
                tracing::error!(order = %order.order_id, "repeated order is dispensing without an outcome: in doubt, reported by recovery");
            }
        }
        out
    }

    /// Advances the session's dispense sequence on `event` for `order_id` and says what
    /// comes next.
    fn advance(&mut self, order_id: OrderId, event: Happened) -> Result<Next, StepRefused> {
        let Some(d) = self
            .dispense
            .as_mut()
            .filter(|d| d.seq.order().order_id == order_id)
        else {
            debug_assert!(
                false,
                "a result for order {order_id}, which is not being dispensed"
            );
            tracing::error!(order = %order_id, "a dispense result for an order not being dispensed: ignored");
            return Err(StepRefused::OtherOrder);
        };
        match d.seq.on(event) {
            Ok(()) => Ok(d.seq.next()),
            Err(e) => {
                debug_assert!(false, "{e}");
                tracing::error!(error = %e, order = %order_id, "dispense sequence out of order");
                Err(StepRefused::OutOfOrder)
            }
        }
    }

    /// Stops serving: the agent's own records are not trustworthy right now.
    fn out_of_service(&mut self, reason: &str, shown: &str) -> Vec<Action> {
        self.dispense = None;
        self.phase = Phase::OutOfService {
            reason: reason.to_owned(),
        };
        vec![Action::Show(Screen::OutOfService {
            reason: shown.to_owned(),
        })]
    }

    /// What a refused step leads to: nothing for a stray result, out of service for a bug.
    fn refused_step(&mut self, why: StepRefused) -> Vec<Action> {
        match why {
            StepRefused::OtherOrder => vec![],
            StepRefused::OutOfOrder => self.out_of_service(
                "internal error: a dispense step out of order",
                "internal error",
            ),
        }
    }

    fn written_ahead(&mut self, order_id: OrderId, result: Result<(), String>) -> Vec<Action> {
        if let Err(e) = result {
            let Some(d) = self
                .dispense
                .as_ref()
                .filter(|d| d.seq.order().order_id == order_id)
            else {
                return self.refused_step(StepRefused::OtherOrder);
            };
            // Nothing reached the dispenser. The order stays unreported: the database that
            // would queue its report is the one failing.
            let report = report_for(
                d.seq.order(),
                &self.cfg.cassettes,
                Err(&format!("not dispensed: {e}")),
            );
            let mut out = self.out_of_service("the agent database failed", "database failure");
            out.push(Action::Dispensed(report));
            return out;
        }
        let request = match self.advance(order_id, Happened::WriteAheadCommitted) {
            Ok(Next::RunDevice(request)) => request,
            Ok(_) => return self.refused_step(StepRefused::OutOfOrder),
            Err(why) => return self.refused_step(why),
        };
        match self.advance(order_id, Happened::DeviceStarted) {
            Ok(_) => vec![Action::RunDevice { order_id, request }],
            Err(why) => self.refused_step(why),
        }
    }

    fn device_done(
        &mut self,
        order_id: OrderId,
        result: Result<DeviceOutcome, String>,
        machine_clear: bool,
        detail: serde_json::Value,
    ) -> Vec<Action> {
        match self.advance(order_id, Happened::DeviceFinished(result)) {
            Ok(Next::Record(report)) => {
                if let Some(d) = &mut self.dispense {
                    d.machine_clear = Some(machine_clear);
                }
                vec![Action::Record { report, detail }]
            }
            Ok(_) => self.refused_step(StepRefused::OutOfOrder),
            Err(why) => self.refused_step(why),
        }
    }

    fn recorded(&mut self, order_id: OrderId, result: Result<(), String>) -> Vec<Action> {
        if let Err(e) = result {
            // The order stays "dispensing" on disk: the next start recovers it as in doubt.
            tracing::error!(error = %e, order = %order_id, "cannot record the dispense outcome");
            return self.out_of_service("the agent database failed", "database failure");
        }
        let report = match self.dispense.as_ref().map(|d| d.seq.step()) {
            Some(dispense::Step::Outcome(report)) => report.clone(),
            _ => return self.refused_step(StepRefused::OutOfOrder),
        };
        match self.advance(order_id, Happened::Recorded) {
            Ok(Next::Done) => {}
            Ok(_) => return self.refused_step(StepRefused::OutOfOrder),
            Err(why) => return self.refused_step(why),
        }
        let machine_clear = self
            .dispense
            .take()
            .and_then(|d| d.machine_clear)
            .unwrap_or(false);
        let mut out = vec![
            Action::Dispensed(report.clone()),
            Action::Show(Screen::TakeCash {
                dispensed: report.dispensed,
                outcome: report.outcome,
            }),
        ];
        if machine_clear {
            self.phase = Phase::Idle;
        } else {
            let reason = "the dispenser needs recovery".to_owned();
            self.phase = Phase::OutOfService {
                reason: reason.clone(),
            };
            self.device_fault = true;
            out.push(Action::Recover);
            out.push(Action::Show(Screen::OutOfService { reason }));
        }
        out
    }

    /// The periodic device check: a silent device takes an idle ATM out of service with an
    /// alarm; a device that answers again while the ATM is out of service because of it is
    /// recovered (status, purge if notes may be inside), and [`Input::MachineClear`] puts
    /// the ATM back in service.
    fn device_checked(&mut self, result: Result<(), String>) -> Vec<Action> {
        self.device_silent = result.is_err();
        match (&self.phase, result) {
            (Phase::Idle, Err(error)) => {
                self.device_fault = true;
                self.recover_pending = true;
                let mut out = vec![Action::Journal {
                    kind: JournalKind::DeviceFault,
                    tx_id: None,
                    order_id: None,
                    detail: json!({ "error": error }),
                }];
                out.extend(self.out_of_service(
                    &format!("the dispenser does not answer: {error}"),
                    "the dispenser does not answer",
                ));
                out
            }
            (Phase::OutOfService { .. }, Err(_)) if self.device_fault => {
                self.recover_pending = true;
                vec![]
            }
            (Phase::OutOfService { .. }, Ok(())) if self.device_fault && self.recover_pending => {
                self.recover_pending = false;
                vec![Action::Recover]
            }
            _ => vec![],
        }
    }

    /// A recovery could not reach the device (it failed, rather than leaving the machine
    /// unclear): it runs again once the device answers.
    fn recovery_failed(&mut self) -> Vec<Action> {
        if self.device_fault {
            self.recover_pending = true;
        }
        vec![]
    }

    fn tick(&mut self, now: u64) -> Vec<Action> {
        let (tx, why) = match &self.phase {
            Phase::Presented { tx_id, since, .. }
                if now >= since.saturating_add(self.cfg.present_timeout.as_secs()) =>
            {
                (*tx_id, "no answer from the hub")
            }
            Phase::AwaitingConfirmation {
                tx_id, confirm_by, ..
            } if now >= confirm_by.saturating_add(self.cfg.confirm_grace.as_secs()) => {
                (*tx_id, "not confirmed in time")
            }
            _ => return vec![],
        };
        self.phase = Phase::Idle;
        vec![
            Action::Send {
                jti: (self.new_jti)(),
                msg: AtmUp::SessionCancelled(SessionCancelled {
                    tx_id: tx,
                    reason: CancelReason::Timeout,
                }),
                re: None,
                priority: Priority::Critical,
            },
            journal(
                JournalKind::SessionEnded,
                Some(tx),
                None,
                json!({ "why": why }),
            ),
            Action::Show(Screen::Cancelled { reason: why.into() }),
        ]
    }
}

fn abort_text(reason: AbortReason) -> &'static str {
    match reason {
        AbortReason::Declined => "declined on the phone",
        AbortReason::NotMe => "declined on the phone",
        AbortReason::Timeout => "not confirmed in time",
        AbortReason::AuthenticationFailed => "authentication failed",
        AbortReason::Operator => "stopped by the operator",
    }
}

fn refusal_text(reason: &RejectReason) -> String {
    match reason {
        RejectReason::CodeExpired => "code expired".into(),
        RejectReason::CodeAlreadyUsed => "code already used".into(),
        RejectReason::CodeInvalid => "code not valid".into(),
        other => format!("refused by the bank ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_hardware::dispenser::{CassetteId, CassetteState, CassetteTally, DispenseResult};
    use qrcash_protocol::PrivateKey;
    use qrcash_protocol::messages::{Abort, Ack, AwaitConfirmation, NoteCount, Rejected};

    const NOW: u64 = 1_800_000_000;

    struct Fixture {
        hub: PrivateKey,
        s: Session,
    }

    fn fixture() -> Fixture {
        let hub = PrivateKey::generate();
        let mut n = 0;
        let s = Session::new(
            SessionConfig {
                atm_id: "atm-1".into(),
                currency: Currency::JPY,
                cassettes: vec![10_000, 1_000],
                hub_keys: vec![hub.public().clone()],
                present_timeout: Duration::from_secs(30),
                confirm_grace: Duration::from_secs(10),
                rescan_quiet: Duration::from_secs(10),
            },
            Box::new(move || {
                n += 1;
                format!("jti-{n}")
            }),
        );
        let mut f = Fixture { hub, s };
        f.s.handle(Input::Link(true), NOW);
        f
    }

    fn sends(actions: &[Action]) -> Vec<&AtmUp> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { msg, .. } => Some(msg),
                _ => None,
            })
            .collect()
    }

    /// How many `CodePresented` the actions send.
    fn presented(actions: &[Action]) -> usize {
        sends(actions)
            .iter()
            .filter(|m| matches!(m, AtmUp::CodePresented(_)))
            .count()
    }

    fn order(tx: TxId, amount: u64) -> DispenseOrder {
        DispenseOrder {
            order_id: OrderId([9; 16]),
            tx_id: tx,
            atm_id: "atm-1".into(),
            amount: Amount::new(amount, Currency::JPY),
            notes: vec![NoteCount {
                denomination: 10_000,
                count: (amount / 10_000) as u32,
            }],
            expires_at: NOW + 60,
        }
    }

    /// Delivers an order as the shell does: the session asks for the journal's entry first,
    /// and the shell answers "never started".
    fn deliver(f: &mut Fixture, jti: &str, order: DispenseOrder, now: u64) -> Vec<Action> {
        let a = f.s.handle(
            Input::Down {
                jti: jti.into(),
                msg: AtmDown::DispenseOrder(order.clone()),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::LookUpOrder {
                jti: jti.into(),
                order: order.clone()
            }]
        );
        f.s.handle(
            Input::OrderLookedUp {
                jti: jti.into(),
                order,
                known: KnownOrder::New,
            },
            now,
        )
    }

    /// The device's count of `notes` 10,000-yen notes, all delivered.
    fn delivered(notes: u32) -> DeviceOutcome {
        DeviceOutcome {
            requested: DispenseRequest::upper_lower(notes, 0),
            cassettes: vec![CassetteTally {
                picked: notes,
                exited: notes,
                rejected: 0,
                state: CassetteState::Normal,
                ..CassetteTally::new(CassetteId(1), notes)
            }],
            result: DispenseResult::Completed,
        }
    }

    /// A session dispensing order `[9; 16]` (20,000 yen), its write-ahead not yet done.
    fn dispensing() -> Fixture {
        let mut f = fixture();
        let tx = to_awaiting(&mut f);
        deliver(&mut f, "h2", order(tx, 20_000), NOW + 5);
        f
    }

    fn written_ahead(f: &mut Fixture, result: Result<(), String>) -> Vec<Action> {
        let order_id = OrderId([9; 16]);
        f.s.handle(Input::WriteAheadDone { order_id, result }, NOW + 6)
    }

    fn device_answered(
        f: &mut Fixture,
        result: Result<DeviceOutcome, String>,
        machine_clear: bool,
    ) -> Vec<Action> {
        let input = Input::DeviceDone {
            order_id: OrderId([9; 16]),
            result,
            machine_clear,
            detail: json!({}),
        };
        f.s.handle(input, NOW + 7)
    }

    fn recorded(f: &mut Fixture, result: Result<(), String>) -> Vec<Action> {
        let order_id = OrderId([9; 16]);
        f.s.handle(Input::Recorded { order_id, result }, NOW + 8)
    }

    /// Runs the session's order through write-ahead, device and record; returns the
    /// actions of the last step.
    fn dispense(
        f: &mut Fixture,
        result: Result<DeviceOutcome, String>,
        machine_clear: bool,
    ) -> Vec<Action> {
        let a = written_ahead(f, Ok(()));
        assert!(matches!(a[..], [Action::RunDevice { .. }]), "{a:?}");
        let a = device_answered(f, result, machine_clear);
        assert!(matches!(a[..], [Action::Record { .. }]), "{a:?}");
        recorded(f, Ok(()))
    }

    /// Presents a fresh code and confirms; returns the tx.
    fn to_awaiting(f: &mut Fixture) -> TxId {
        let tx = TxId::random();
        let code = CodeToken::issue(&f.hub, tx, NOW + 300);
        let a = f.s.handle(Input::CodeRead(code), NOW);
        assert!(matches!(sends(&a)[..], [AtmUp::CodePresented(_)]));
        let a = f.s.handle(
            Input::Down {
                jti: "h1".into(),
                msg: AtmDown::AwaitConfirmation(AwaitConfirmation {
                    tx_id: tx,
                    amount: Amount::new(20_000, Currency::JPY),
                    confirm_by: NOW + 60,
                }),
            },
            NOW + 1,
        );
        assert!(a.contains(&Action::Show(Screen::ConfirmOnPhone {
            amount: Amount::new(20_000, Currency::JPY),
            confirm_by: NOW + 60
        })));
        tx
    }

    /// The hub refuses the first code presented (`jti-1`) as used: the ATM is idle again.
    fn refuse_first_code(f: &mut Fixture) {
        f.s.handle(
            Input::SendRefused {
                re: "jti-1".into(),
                reason: RejectReason::CodeAlreadyUsed,
            },
            NOW + 1,
        );
        assert_eq!(f.s.phase(), &Phase::Idle);
    }

    #[test]
    fn full_session_presents_then_dispenses_a_matching_order() {
        let mut f = fixture();
        let tx = to_awaiting(&mut f);
        let a = deliver(&mut f, "h2", order(tx, 20_000), NOW + 5);
        // The write-ahead record comes first; the device only after it is on disk.
        assert!(matches!(a.last(), Some(Action::WriteAhead { order }) if order.tx_id == tx));
        assert!(!a.iter().any(|a| matches!(a, Action::RunDevice { .. })));
        assert_eq!(f.s.atm_state(), AtmState::Dispensing);
        // A second code during the dispense is ignored.
        let other = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        assert!(f.s.handle(Input::CodeRead(other), NOW + 6).is_empty());
        let a = f.s.handle(
            Input::WriteAheadDone {
                order_id: OrderId([9; 16]),
                result: Ok(()),
            },
            NOW + 6,
        );
        assert_eq!(
            a,
            vec![Action::RunDevice {
                order_id: OrderId([9; 16]),
                request: DispenseRequest::upper_lower(2, 0)
            }]
        );
        let a = f.s.handle(
            Input::DeviceDone {
                order_id: OrderId([9; 16]),
                result: Ok(delivered(2)),
                machine_clear: true,
                detail: json!({}),
            },
            NOW + 9,
        );
        let Some(Action::Record { report, .. }) = a.first() else {
            panic!("expected Record, got {a:?}");
        };
        assert_eq!(report.outcome, DispenseOutcome::Dispensed);
        let a = f.s.handle(
            Input::Recorded {
                order_id: OrderId([9; 16]),
                result: Ok(()),
            },
            NOW + 10,
        );
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Show(Screen::TakeCash { .. })))
        );
        assert!(matches!(a[0], Action::Dispensed(_)));
        assert_eq!(f.s.phase(), &Phase::Idle);
    }

    #[test]
    fn the_session_decides_when_the_hub_window_is_saved() {
        let mut f = fixture();
        let w = SenderWindow {
            highest: 7,
            seen: 1,
        };
        let received = |msg: AtmDown, re: Option<&str>| Input::Received {
            jti: "h7".into(),
            re: re.map(str::to_owned),
            msg,
            window: w,
        };
        // An ack is applied together with its window, never after it.
        let a = f.s.handle(
            received(
                AtmDown::Ack(Ack {
                    ids: vec!["a1".into()],
                }),
                Some("a1"),
            ),
            NOW,
        );
        assert_eq!(
            a,
            vec![Action::ApplyAck {
                ids: vec!["a1".into()],
                window: w
            }]
        );
        // A permanent refusal: dead letter first, then the window.
        let a = f.s.handle(
            received(
                AtmDown::Rejected(Rejected {
                    reason: RejectReason::Malformed,
                    message: "no".into(),
                }),
                Some("q1"),
            ),
            NOW,
        );
        assert_eq!(
            a[..2],
            [
                Action::DeadLetter {
                    re: "q1".into(),
                    reason: RejectReason::Malformed,
                    message: "no".into()
                },
                Action::SaveWindow(w)
            ]
        );
        // A refusal of nothing: only the window.
        let a = f.s.handle(
            received(
                AtmDown::Rejected(Rejected {
                    reason: RejectReason::Internal,
                    message: "?".into(),
                }),
                None,
            ),
            NOW,
        );
        assert_eq!(a, vec![Action::SaveWindow(w)]);
        // An enrolment's refusal names an `Enrol`, never an outbox message: a stranger's
        // enrolment reusing an outbox `jti` dead-letters nothing.
        let a = f.s.handle(
            received(
                AtmDown::Rejected(Rejected {
                    reason: RejectReason::EnrolmentRefused,
                    message: "wrong_address: …".into(),
                }),
                Some("q1"),
            ),
            NOW,
        );
        assert_eq!(a, vec![Action::SaveWindow(w)]);
        // Anything else: the window first, then what the message means.
        let order = order(TxId::random(), 20_000);
        let a =
            f.s.handle(received(AtmDown::DispenseOrder(order.clone()), None), NOW);
        assert_eq!(
            a,
            vec![
                Action::SaveWindow(w),
                Action::LookUpOrder {
                    jti: "h7".into(),
                    order
                }
            ]
        );
    }

    #[test]
    fn a_silent_dispenser_takes_the_atm_out_of_service_until_it_answers_and_is_clear() {
        let mut f = fixture();
        assert!(f.s.wants_device_check());
        assert!(f.s.handle(Input::DeviceChecked(Ok(())), NOW).is_empty());
        let a =
            f.s.handle(Input::DeviceChecked(Err("no answer".into())), NOW);
        assert!(matches!(
            a[0],
            Action::Journal {
                kind: JournalKind::DeviceFault,
                ..
            }
        ));
        assert_eq!(f.s.atm_state(), AtmState::OutOfService);
        assert!(
            f.s.wants_device_check(),
            "it keeps listening for the device"
        );
        // Still silent: no second alarm.
        assert!(
            f.s.handle(Input::DeviceChecked(Err("no answer".into())), NOW + 1)
                .is_empty()
        );
        // It answers: recovered once, in service when the machine is clear.
        assert_eq!(
            f.s.handle(Input::DeviceChecked(Ok(())), NOW + 2),
            vec![Action::Recover]
        );
        assert!(
            f.s.handle(Input::DeviceChecked(Ok(())), NOW + 3).is_empty(),
            "one recovery per outage: a machine recovery leaves unclear needs an operator"
        );
        // A recovery that could not reach the device runs again once it answers.
        f.s.handle(Input::RecoveryFailed, NOW + 3);
        assert_eq!(
            f.s.handle(Input::DeviceChecked(Ok(())), NOW + 3),
            vec![Action::Recover]
        );
        f.s.handle(Input::MachineClear, NOW + 4);
        assert_eq!(f.s.phase(), &Phase::Idle);

        // During a customer's session the device is not polled. A silent answer that comes
        // in then changes the session in nothing, but its order is refused before anything
        // is written ahead: sent to a silent device, it would end in doubt.
        let tx = to_awaiting(&mut f);
        assert!(!f.s.wants_device_check());
        assert!(
            f.s.handle(Input::DeviceChecked(Err("no answer".into())), NOW + 5)
                .is_empty()
        );
        assert_eq!(f.s.atm_state(), AtmState::AwaitingConfirmation);
        let a = deliver(&mut f, "h9", order(tx, 20_000), NOW + 6);
        assert!(
            sends(&a).iter().any(|m| matches!(m,
                AtmUp::OrderRefused(r) if r.reason.contains("does not answer"))),
            "{a:?}"
        );
        assert!(!a.iter().any(|a| matches!(a, Action::WriteAhead { .. })));

        // Out of service for another reason (the database): the device check does not
        // bring it back.
        let mut g = fixture();
        g.s.set_out_of_service("the agent database failed".into());
        assert!(!g.s.wants_device_check());
        assert!(g.s.handle(Input::DeviceChecked(Ok(())), NOW).is_empty());
    }

    #[test]
    fn forged_expired_and_repeated_codes_are_handled_offline() {
        let mut f = fixture();
        let mallory = PrivateKey::generate();
        let forged = CodeToken::issue(&mallory, TxId::random(), NOW + 300);
        let a = f.s.handle(Input::CodeRead(forged), NOW);
        assert!(sends(&a).is_empty());
        assert!(matches!(
            a.last(),
            Some(Action::Show(Screen::CodeRefused { .. }))
        ));
        let expired = CodeToken::issue(&f.hub, TxId::random(), NOW - 1);
        let a = f.s.handle(Input::CodeRead(expired), NOW);
        assert!(sends(&a).is_empty());
        assert_eq!(f.s.phase(), &Phase::Idle);
        // Not a qrcash code at all: nothing happens.
        assert!(
            f.s.handle(Input::CodeRead("https://x".into()), NOW)
                .is_empty()
        );
        // The same valid code on consecutive frames is presented once.
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        assert_eq!(
            sends(&f.s.handle(Input::CodeRead(code.clone()), NOW)).len(),
            1
        );
        refuse_first_code(&mut f);
        assert!(sends(&f.s.handle(Input::CodeRead(code), NOW + 2)).is_empty());
    }

    #[test]
    fn offline_codes_are_verified_but_not_presented() {
        let mut f = fixture();
        f.s.handle(Input::Link(false), NOW);
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        let a = f.s.handle(Input::CodeRead(code), NOW);
        assert!(sends(&a).is_empty());
        assert!(a.contains(&Action::Show(Screen::ServiceUnavailable)));
        assert_eq!(f.s.phase(), &Phase::Idle);
    }

    /// A code the hub answered is never presented again, however long it stays in front of
    /// the camera (a photo of a used code); one the hub never answered is, after the quiet
    /// time, so a customer can try again after a timeout.
    #[test]
    fn a_code_the_hub_answered_is_never_presented_again() {
        let mut f = fixture();
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 3_000);
        assert_eq!(
            presented(&f.s.handle(Input::CodeRead(code.clone()), NOW)),
            1
        );
        refuse_first_code(&mut f);
        for later in [NOW + 11, NOW + 100, NOW + 1_000] {
            assert!(f.s.handle(Input::CodeRead(code.clone()), later).is_empty());
        }
        // Accepted, then the session ended: not presented again either.
        let tx = to_awaiting(&mut f);
        f.s.handle(Input::Tick, NOW + 500);
        assert_eq!(f.s.phase(), &Phase::Idle);
        let again = CodeToken::issue(&f.hub, tx, NOW + 3_000);
        assert!(f.s.handle(Input::CodeRead(again), NOW + 600).is_empty());

        // No answer: the session times out, and the code is presented again later.
        let mut g = fixture();
        let code = CodeToken::issue(&g.hub, TxId::random(), NOW + 3_000);
        assert_eq!(
            presented(&g.s.handle(Input::CodeRead(code.clone()), NOW)),
            1
        );
        g.s.handle(Input::Tick, NOW + 31);
        assert_eq!(g.s.phase(), &Phase::Idle);
        assert_eq!(presented(&g.s.handle(Input::CodeRead(code), NOW + 40)), 1);
    }

    /// A code the ATM could not serve when the camera read it is presented as soon as the
    /// ATM can, on the next frame, not after the quiet time: the customer is still holding
    /// it up. Frames read while it still cannot are quiet, as for a served code.
    #[test]
    fn a_code_held_up_while_the_atm_cannot_serve_is_presented_once_it_can() {
        // The hub unreachable, then reachable.
        let mut f = fixture();
        f.s.handle(Input::Link(false), NOW);
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        let a = f.s.handle(Input::CodeRead(code.clone()), NOW);
        assert_eq!(a.len(), 2, "one journal entry and the screen: {a:?}");
        assert!(
            f.s.handle(Input::CodeRead(code.clone()), NOW).is_empty(),
            "the next frame, still offline, is quiet"
        );
        f.s.handle(Input::Link(true), NOW);
        assert_eq!(
            presented(&f.s.handle(Input::CodeRead(code.clone()), NOW)),
            1
        );
        assert!(
            f.s.handle(Input::CodeRead(code), NOW + 1).is_empty(),
            "presented once per showing"
        );

        // Out of service because the dispenser was silent, then clear again.
        let mut f = fixture();
        f.s.handle(Input::DeviceChecked(Err("no answer".into())), NOW);
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        assert_eq!(
            presented(&f.s.handle(Input::CodeRead(code.clone()), NOW)),
            0
        );
        assert!(f.s.handle(Input::CodeRead(code.clone()), NOW).is_empty());
        f.s.handle(Input::DeviceChecked(Ok(())), NOW);
        f.s.handle(Input::MachineClear, NOW);
        assert_eq!(presented(&f.s.handle(Input::CodeRead(code), NOW)), 1);

        // Another customer's code read during a session waits for the session to end; the
        // session's own code, still in view, is not presented again.
        let mut f = fixture();
        let mine = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        assert_eq!(
            presented(&f.s.handle(Input::CodeRead(mine.clone()), NOW)),
            1
        );
        let theirs = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        assert!(f.s.handle(Input::CodeRead(theirs.clone()), NOW).is_empty());
        refuse_first_code(&mut f);
        assert!(f.s.handle(Input::CodeRead(mine), NOW + 1).is_empty());
        assert_eq!(presented(&f.s.handle(Input::CodeRead(theirs), NOW + 1)), 1);
    }

    #[test]
    fn bad_orders_are_refused_without_dispensing() {
        type MakeOrder = Box<dyn Fn(TxId) -> DispenseOrder>;
        let cases: Vec<(&str, MakeOrder, bool)> = vec![
            (
                "other atm",
                Box::new(|tx| DispenseOrder {
                    atm_id: "atm-2".into(),
                    ..order(tx, 20_000)
                }),
                true,
            ),
            (
                "other tx",
                Box::new(|_| order(TxId::random(), 20_000)),
                false,
            ),
            (
                "expired",
                Box::new(|tx| DispenseOrder {
                    expires_at: NOW,
                    ..order(tx, 20_000)
                }),
                true,
            ),
            (
                "notes mismatch",
                Box::new(|tx| DispenseOrder {
                    amount: Amount::new(30_000, Currency::JPY),
                    ..order(tx, 20_000)
                }),
                true,
            ),
            (
                "currency",
                Box::new(|tx| DispenseOrder {
                    amount: Amount::new(20_000, Currency::EUR),
                    ..order(tx, 20_000)
                }),
                true,
            ),
            (
                "denomination",
                Box::new(|tx| DispenseOrder {
                    notes: vec![NoteCount {
                        denomination: 5_000,
                        count: 4,
                    }],
                    ..order(tx, 20_000)
                }),
                true,
            ),
        ];
        for (name, make, ends_session) in cases {
            let mut f = fixture();
            let tx = to_awaiting(&mut f);
            let a = deliver(&mut f, "h9", make(tx), NOW + 5);
            assert!(
                !a.iter()
                    .any(|a| matches!(a, Action::WriteAhead { .. } | Action::RunDevice { .. })),
                "{name}: dispensed"
            );
            let refused = a.iter().find_map(|a| match a {
                Action::Send {
                    msg: AtmUp::OrderRefused(_),
                    re,
                    priority,
                    ..
                } => Some((re.clone(), *priority)),
                _ => None,
            });
            assert_eq!(
                refused,
                Some((Some("h9".into()), Priority::Critical)),
                "{name}"
            );
            assert_eq!(f.s.phase() == &Phase::Idle, ends_session, "{name}");
        }
        // An order with no session at all.
        let mut f = fixture();
        let a = deliver(&mut f, "h1", order(TxId::random(), 10_000), NOW);
        assert!(matches!(sends(&a)[..], [AtmUp::OrderRefused(_)]));
    }

    #[test]
    fn abort_and_timeouts_return_to_idle_and_cancel() {
        let mut f = fixture();
        let tx = to_awaiting(&mut f);
        let a = f.s.handle(
            Input::Down {
                jti: "h3".into(),
                msg: AtmDown::Abort(Abort {
                    tx_id: tx,
                    reason: AbortReason::Declined,
                }),
            },
            NOW + 5,
        );
        assert!(sends(&a).is_empty(), "the hub knows: nothing to send");
        assert_eq!(f.s.phase(), &Phase::Idle);

        // Confirmation deadline + grace passes.
        let tx = to_awaiting(&mut f);
        assert!(f.s.handle(Input::Tick, NOW + 69).is_empty());
        let a = f.s.handle(Input::Tick, NOW + 70);
        assert!(matches!(
            sends(&a)[..],
            [AtmUp::SessionCancelled(SessionCancelled { tx_id, reason: CancelReason::Timeout })] if *tx_id == tx
        ));
        assert_eq!(f.s.phase(), &Phase::Idle);

        // The hub never answers the presentation.
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 3000);
        f.s.handle(Input::CodeRead(code), NOW + 100);
        let a = f.s.handle(Input::Tick, NOW + 130);
        assert!(matches!(sends(&a)[..], [AtmUp::SessionCancelled(_)]));
    }

    #[test]
    fn a_machine_left_unclear_goes_out_of_service_until_recovered() {
        let mut f = fixture();
        let tx = to_awaiting(&mut f);
        deliver(&mut f, "h2", order(tx, 20_000), NOW + 5);
        let a = dispense(&mut f, Ok(delivered(2)), false);
        assert!(a.contains(&Action::Recover));
        assert_eq!(f.s.atm_state(), AtmState::OutOfService);
        let code = CodeToken::issue(&f.hub, TxId::random(), NOW + 300);
        assert!(sends(&f.s.handle(Input::CodeRead(code), NOW + 7)).is_empty());
        f.s.handle(Input::MachineClear, NOW + 8);
        assert_eq!(f.s.phase(), &Phase::Idle);
    }

    #[test]
    fn a_repeated_order_is_never_dispensed_again_and_gets_its_stored_report() {
        let mut f = fixture();
        let tx = to_awaiting(&mut f);
        let o = order(tx, 20_000);
        let stored = report_for(&o, &[10_000, 1_000], Ok(&delivered(2)));
        let a = f.s.handle(
            Input::OrderLookedUp {
                jti: "h7".into(),
                order: o.clone(),
                known: KnownOrder::Started {
                    stored: Box::new(o.clone()),
                    report: Some(Box::new(stored.clone())),
                },
            },
            NOW + 5,
        );
        assert!(!a.iter().any(|a| matches!(a, Action::WriteAhead { .. })));
        let resent = a.iter().find_map(|a| match a {
            Action::Send {
                msg: AtmUp::DispenseReport(r),
                re,
                priority,
                ..
            } => Some((r.clone(), re.clone(), *priority)),
            _ => None,
        });
        assert_eq!(
            resent,
            Some((stored, Some("h7".into()), Priority::Critical))
        );
        // Started without a recorded outcome: in doubt, neither refused nor reported here.
        let a = f.s.handle(
            Input::OrderLookedUp {
                jti: "h8".into(),
                order: o.clone(),
                known: KnownOrder::Started {
                    stored: Box::new(o.clone()),
                    report: None,
                },
            },
            NOW + 5,
        );
        assert!(sends(&a).is_empty(), "{a:?}");
        // The order being dispensed right now, repeated: nothing but the journal line.
        deliver(&mut f, "h2", o.clone(), NOW + 6);
        let a = f.s.handle(
            Input::OrderLookedUp {
                jti: "h9".into(),
                order: o.clone(),
                known: KnownOrder::Started {
                    stored: Box::new(o),
                    report: None,
                },
            },
            NOW + 7,
        );
        assert!(matches!(
            a[..],
            [Action::Journal {
                kind: JournalKind::OrderRefused,
                ..
            }]
        ));
        assert_eq!(f.s.atm_state(), AtmState::Dispensing);
    }

    #[test]
    fn a_failed_write_ahead_dispenses_nothing_and_stops_service() {
        let mut f = dispensing();
        let a = written_ahead(&mut f, Err("disk full".into()));
        assert!(!a.iter().any(|a| matches!(a, Action::RunDevice { .. })));
        assert!(
            matches!(a.last(), Some(Action::Dispensed(r)) if r.outcome == DispenseOutcome::Failed && r.dispensed.minor == 0)
        );
        assert_eq!(f.s.atm_state(), AtmState::OutOfService);
        // A record that cannot be written stops service too (the next start recovers it).
        let mut f = dispensing();
        written_ahead(&mut f, Ok(()));
        device_answered(&mut f, Ok(delivered(2)), true);
        recorded(&mut f, Err("disk full".into()));
        assert_eq!(f.s.atm_state(), AtmState::OutOfService);
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "not allowed in step"))]
    fn a_device_result_before_the_write_ahead_is_a_bug_that_stops_service() {
        let mut f = dispensing();
        // The shell skipped the write-ahead: debug builds fail here, release builds stop
        // serving instead of recording an outcome the journal never announced.
        let a = device_answered(&mut f, Ok(delivered(2)), true);
        assert!(!a.iter().any(|a| matches!(a, Action::Record { .. })));
        assert_eq!(f.s.atm_state(), AtmState::OutOfService);
    }
}
