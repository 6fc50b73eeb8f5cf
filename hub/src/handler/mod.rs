//! The hub's pure entry point: bytes and a topic in, signed answers out, no MQTT inside.
//!
//! [`Hub::handle`] (and [`Hub::handle_batch`], which the writer task uses for group commit)
//! runs each message through the same pipeline:
//!
//! 1. topic → sender class and id; size limit; JWS parse (nothing is trusted yet);
//! 2. key by `kid` (an enrolled ATM or device key, or the key inside a `Login`), strict
//!    signature verification, claims decoding;
//! 3. addressing (`aud` is this hub, `iss` is the topic's id), times (`iat`/`exp`);
//! 4. duplicate (same sender and `jti` already processed) → the same answers again, applied
//!    once; otherwise the per-sender sequence window;
//! 5. the message's own command (`route.rs` picks one of `cmd/`) inside a savepoint;
//! 6. the replay window, the processed-id record with the answers, and the audit entry, in
//!    the same transaction as the effects.
//!
//! A failure in steps 1–2 is answered with nothing but an audit entry: the sender is not
//! authenticated. From step 3 on the sender gets a `Rejected` naming the refused `jti`. A
//! refusal undoes the handler's effects (except the few that must stay, such as counting a
//! wrong PIN). Answers are only handed out after the transaction committed.

mod cmd;
mod guard;
mod keys;
pub(crate) use keys::PhoneKeys;
mod route;
pub use cmd::change_password::MIN_PASSWORD_CHARS;
#[cfg(test)]
mod simulation;
mod steps;
mod sweep;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use qrcash_protocol::envelope::{self, Sealed};
use qrcash_protocol::messages::Secret;
use qrcash_protocol::messages::{AtmDown, AtmUp, PhonePush, PhoneUp, Rejected};
use qrcash_protocol::receive::{self, OpenError, ReceiveError};
use qrcash_protocol::topics::{self, Topic};
use qrcash_protocol::{
    Claims, Clock, EnvelopeError, MAX_UPLINK_BYTES, PrivateKey, RejectReason, ReplayError, Signer,
};
use qrcash_protocol::{SealedSecret, SecretField};
use serde::{Deserialize, Serialize};

use crate::config::HubConfig;
use crate::error::StoreError;
use crate::identity::{self, CheckedSecret};
use crate::keyring::{KeyRing, KeyRingError};
use crate::rng::Entropy;
use crate::store::audit::{self, AuditEntry};
use crate::store::rows::{self, AtmRow, DeviceRow};
use crate::store::{self, Db, Store, Tx};
use crate::warnings::WarningCatalog;

pub use sweep::SweepReport;

/// The ledger posting for one effect of a withdrawal step (operator resolution uses it).
pub fn posting_for(
    w: &rows::WithdrawalRow,
    effect: crate::withdrawal::LedgerEffect,
) -> Result<crate::ledger::Posting, StoreError> {
    steps::posting(w, effect)
}

/// The `Receipt` of a settled withdrawal and its device (operator settlements queue it).
pub fn receipt_for(
    db: Db<'_>,
    w: &rows::WithdrawalRow,
    settled: u64,
    status: qrcash_protocol::messages::ReceiptStatus,
    now: u64,
) -> Result<(String, qrcash_protocol::PhonePush), StoreError> {
    steps::receipt(db, w, settled, status, now)
}

/// A message received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The MQTT topic it arrived on.
    pub topic: String,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// Passwords and PINs in it already checked by a secret worker (`crate::service`); the
    /// handler checks any other itself.
    pub checked: Vec<CheckedSecret>,
}

impl Incoming {
    /// A message with nothing checked ahead.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Incoming {
            topic: topic.into(),
            payload: payload.into(),
            checked: Vec::new(),
        }
    }
}

/// A message for the broker, already signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The MQTT topic to publish on.
    pub topic: String,
    /// The payload (a JWS compact serialization).
    #[serde(with = "payload_text")]
    pub payload: Vec<u8>,
    /// Its row in the transactional outbox (`store::outbox`), when the hub keeps one: to be
    /// confirmed once it reached the broker ([`Hub::confirm_published`]).
    #[serde(skip)]
    pub outbox: Option<i64>,
    /// The `exp` sealed inside, when the hub sealed it here (how long the outbox keeps it).
    #[serde(skip)]
    pub expires: Option<u64>,
}

impl Outgoing {
    /// A message for `topic`, not (yet) in the outbox.
    pub fn new(topic: impl Into<String>, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic: topic.into(),
            payload,
            outbox: None,
            expires: None,
        }
    }

    /// The message `signer` seals from `claims`, for `topic`.
    fn sealed<B: Serialize>(topic: String, signer: &Signer, claims: &Claims<B>) -> Outgoing {
        Outgoing {
            expires: Some(claims.exp),
            ..Outgoing::new(topic, signer.seal(claims).into_bytes())
        }
    }
}

/// Stores payloads (ASCII JWS) as text rather than arrays of numbers.
mod payload_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}

/// What happened to a message that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Processed now.
    Applied,
    /// Seen before: answered again, nothing applied.
    Duplicate,
    /// An ATM presence notice (unsigned), recorded.
    Presence,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandleError {
    /// Not one of the topics the hub accepts messages on.
    #[error("topic {0:?} is not an up-link topic of this hub")]
    Topic(String),
    /// No enrolled ATM or device with this id (and not a login).
    #[error("unknown sender {0:?}")]
    UnknownSender(String),
    /// The envelope failed (size, JWS, key, signature, claims, addressing).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The anti-replay rules failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The message was authentic but refused.
    #[error("{message}")]
    Refused {
        /// Machine-readable reason, as sent to the sender.
        reason: RejectReason,
        /// Human-readable explanation.
        message: String,
    },
    /// Authentic (the enrolled key's signature holds) but the claims do not decode: answered
    /// `malformed` about message `jti`.
    #[error("malformed message: {message}")]
    SignedMalformed {
        /// `atm` or `phone`.
        class: &'static str,
        /// The sender's id.
        sender: String,
        /// The message's `jti`.
        jti: String,
        /// What did not decode.
        message: String,
    },
    /// The hub failed (database); nothing was applied.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ReceiveError> for HandleError {
    fn from(e: ReceiveError) -> Self {
        match e {
            ReceiveError::Envelope(e) => HandleError::Envelope(e),
            ReceiveError::Replay(e) => HandleError::Replay(e),
        }
    }
}

impl HandleError {
    /// The reason given to the sender (or recorded in the audit log).
    pub fn reason(&self) -> RejectReason {
        match self {
            HandleError::Topic(_) => RejectReason::WrongAddress,
            HandleError::UnknownSender(_) => RejectReason::UnknownSender,
            HandleError::SignedMalformed { .. } => RejectReason::Malformed,
            HandleError::Envelope(e) => match e {
                EnvelopeError::TooLarge { .. } => RejectReason::TooLarge,
                EnvelopeError::NotText | EnvelopeError::Claims(_) => RejectReason::Malformed,
                EnvelopeError::Jws(qrcash_protocol::JwsError::BadSignature)
                | EnvelopeError::Jws(qrcash_protocol::JwsError::UnsupportedAlgorithm(_))
                | EnvelopeError::Jws(qrcash_protocol::JwsError::SignatureLength(_))
                | EnvelopeError::MissingKeyId
                | EnvelopeError::UnknownKey(_) => RejectReason::BadSignature,
                EnvelopeError::Jws(_) | EnvelopeError::WrongType(_) => RejectReason::Malformed,
                EnvelopeError::WrongAudience { .. } | EnvelopeError::WrongIssuer { .. } => {
                    RejectReason::WrongAddress
                }
            },
            HandleError::Replay(_) => RejectReason::Replayed,
            HandleError::Refused { reason, .. } => reason.clone(),
            HandleError::Internal(_) => RejectReason::Internal,
        }
    }
}

/// The result of handling one message.
#[derive(Debug, Clone)]
pub struct Handled {
    /// Signed messages to publish (only after the transaction committed).
    pub outgoing: Vec<Outgoing>,
    /// What happened.
    pub result: Result<Disposition, HandleError>,
}

/// A refusal from a message handler.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub reason: RejectReason,
    pub message: String,
    /// Keep the handler's effects (e.g. a counted wrong PIN) instead of undoing them.
    pub keep_effects: bool,
    /// Messages to send besides the `Rejected` (only with `keep_effects`).
    pub extra: Vec<Outgoing>,
}

/// Why a handler stopped.
#[derive(Debug)]
pub(crate) enum Fail {
    Refused(Refusal),
    Store(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

/// A refusal that undoes everything.
pub(crate) fn refuse(reason: RejectReason, message: impl Into<String>) -> Fail {
    Fail::Refused(Refusal {
        reason,
        message: message.into(),
        keep_effects: false,
        extra: Vec::new(),
    })
}

pub(crate) type Outcome = Result<Vec<Outgoing>, Fail>;

/// The authenticated sender of a message.
#[derive(Debug, Clone)]
pub(crate) enum Sender {
    Atm(AtmRow),
    /// A board enrolling a key (an `Enrol` signed by the key it carries); the ATM as
    /// enrolled before, if it was.
    Enrolling(String, Option<AtmRow>),
    /// A phone; `None` until its first login enrols it.
    Phone(String, Option<DeviceRow>),
}

/// Everything a message handler may use. Time and randomness come in from outside.
pub(crate) struct Ctx<'a> {
    pub db: Db<'a>,
    pub cfg: &'a HubConfig,
    pub signer: &'a Signer,
    /// The signing key and the previous keys still accepted.
    pub keys: &'a KeyRing,
    pub warnings: &'a WarningCatalog,
    pub rng: &'a mut dyn Entropy,
    pub now: u64,
    /// The sender's id and the incoming `jti`, so answers to it carry `re`.
    pub sender: String,
    pub jti: String,
    /// Detail for the audit entry (ids, amounts; never secrets).
    pub detail: Option<String>,
    /// Secrets of this message checked ahead (see [`Incoming::checked`]).
    pub checked: &'a [CheckedSecret],
    /// The key id that signed the message (empty outside a message).
    pub sender_kid: String,
    /// The message's `seq` and `iat` (0 outside a message).
    pub seq: u64,
    /// See `seq`.
    pub iat: u64,
}

/// What every context of one message shares: the configuration, keys and warnings, the
/// time, and the secrets checked ahead.
#[derive(Clone, Copy)]
struct Shared<'a> {
    cfg: &'a HubConfig,
    signer: &'a Signer,
    keys: &'a KeyRing,
    warnings: &'a WarningCatalog,
    now: u64,
    checked: &'a [CheckedSecret],
}

impl<'a> Shared<'a> {
    /// A context on `db` for a message `jti` from `sender`, signed with `kid`.
    fn ctx<'b>(
        &self,
        db: Db<'b>,
        rng: &'b mut dyn Entropy,
        sender: &str,
        jti: &str,
        kid: &str,
    ) -> Ctx<'b>
    where
        'a: 'b,
    {
        Ctx {
            db,
            cfg: self.cfg,
            signer: self.signer,
            keys: self.keys,
            warnings: self.warnings,
            rng,
            now: self.now,
            sender: sender.to_owned(),
            jti: jti.to_owned(),
            detail: None,
            checked: self.checked,
            sender_kid: kid.to_owned(),
            seq: 0,
            iat: 0,
        }
    }
}

impl Ctx<'_> {
    /// Opens a password or PIN of this message: sealed to the hub key for this sender, the
    /// key that signed the message and `field` (`qrcash_protocol::sealed`); `malformed`
    /// when it does not open.
    pub(crate) fn open_secret(
        &self,
        sealed: &SealedSecret,
        field: SecretField,
    ) -> Result<Secret, Fail> {
        self.keys
            .open_secret(sealed, field, &self.sender, &self.sender_kid)
            .map_err(|e| refuse(RejectReason::Malformed, format!("{}: {e}", field.as_str())))
    }

    /// Whether `secret` matches the stored hash `phc`: the answer of a check done ahead when
    /// there is one for exactly this pair, else argon2 here.
    pub(crate) fn secret_matches(&self, secret: &str, phc: &str) -> bool {
        let key = identity::check_key(secret, phc);
        match self.checked.iter().find(|c| c.key == key) {
            Some(c) => c.ok,
            None => identity::verify_secret(secret, phc),
        }
    }

    fn seal<M: Serialize>(
        &mut self,
        to: &str,
        topic: String,
        msg: M,
        exp: Option<u64>,
    ) -> Result<Outgoing, StoreError> {
        let seq = store::next_seq(self.db)?;
        let ttl = Duration::from_secs(self.cfg.replay.downlink_ttl_s);
        let mut claims = Claims::new(self.signer.id(), to, seq, self.now, ttl, msg);
        if let Some(exp) = exp {
            claims.exp = exp.max(self.now + 1);
        }
        if to == self.sender {
            claims = claims.in_reply_to(self.jti.clone());
        }
        Ok(Outgoing::sealed(topic, self.signer, &claims))
    }

    /// A message sent before, signed again: a fresh `seq`, `jti`, `iat` and `exp` (its
    /// lifetime kept), the same addressee, `re` and body. A receiver's replay rules drop the
    /// stored bytes (their `seq` was seen) and find them stale after their `exp`, so a repeat
    /// must be a new envelope (`docs/protocol.md` §4).
    pub(crate) fn reseal(&mut self, previous: &Outgoing) -> Result<Outgoing, StoreError> {
        self.envelope_again(previous, false)
    }

    /// Like [`Ctx::reseal`], but expiring when the message did: an outbox resend of an answer
    /// that may never have gone out (it is not due after that).
    pub(crate) fn resend(&mut self, previous: &Outgoing) -> Result<Outgoing, StoreError> {
        self.envelope_again(previous, true)
    }

    fn envelope_again(
        &mut self,
        previous: &Outgoing,
        same_exp: bool,
    ) -> Result<Outgoing, StoreError> {
        let old: Claims<serde_json::Value> = Sealed::parse(&previous.payload, usize::MAX)
            .and_then(|s| s.peek())
            .map_err(|e| StoreError::Corrupt(format!("stored message: {e}")))?;
        let lifetime = old.exp.saturating_sub(old.iat).max(1);
        let exp = if same_exp && old.exp > self.now {
            old.exp
        } else {
            self.now.saturating_add(lifetime)
        };
        let claims = Claims {
            iss: old.iss,
            aud: old.aud,
            iat: self.now,
            exp,
            jti: envelope::new_jti(),
            seq: store::next_seq(self.db)?,
            re: old.re,
            msg: old.msg,
        };
        Ok(Outgoing::sealed(
            previous.topic.clone(),
            self.signer,
            &claims,
        ))
    }

    /// A signed message to an ATM.
    pub fn send_atm(&mut self, atm: &str, msg: AtmDown) -> Result<Outgoing, StoreError> {
        self.seal(atm, topics::atm_down(atm), msg, None)
    }

    /// A signed message to an ATM with its own expiry.
    pub fn send_atm_until(
        &mut self,
        atm: &str,
        msg: AtmDown,
        exp: u64,
    ) -> Result<Outgoing, StoreError> {
        self.seal(atm, topics::atm_down(atm), msg, Some(exp))
    }

    /// A signed push to a phone.
    pub fn push_phone(&mut self, device: &str, msg: PhonePush) -> Result<Outgoing, StoreError> {
        self.seal(device, topics::phone_push(device), msg, None)
    }

    /// Random bytes as base64url (challenges, alert ids).
    pub fn random_token(&mut self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.rng.bytes16())
    }

    /// Notes a detail for the audit entry.
    pub fn note(&mut self, detail: impl Into<String>) {
        self.detail = Some(detail.into());
    }
}

/// The hub: database, signing key, configuration, clock and randomness. Single-threaded by
/// design: the writer task owns it.
#[derive(Debug)]
pub struct Hub {
    store: Store,
    signer: Signer,
    keys: KeyRing,
    config: HubConfig,
    warnings: WarningCatalog,
    clock: Arc<dyn Clock>,
    rng: Box<dyn Entropy>,
    /// Keep every answer in the transactional outbox (the service does; see
    /// [`Hub::with_outbox`]).
    outbox: bool,
}

/// An authenticated message, ready for its handler.
struct Verified {
    sender: Sender,
    class: &'static str,
    kid: String,
    body: Body,
    jti: String,
    seq: u64,
}

enum Body {
    Atm(Claims<AtmUp>),
    Phone(Claims<PhoneUp>),
}

impl Body {
    fn type_name(&self) -> String {
        let v = match self {
            Body::Atm(c) => serde_json::to_value(&c.msg),
            Body::Phone(c) => serde_json::to_value(&c.msg),
        };
        v.ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_default()
    }
}

fn reason_code(r: &RejectReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "internal".into())
}

impl Hub {
    /// A hub over an open store.
    pub fn new(
        store: Store,
        signer: Signer,
        config: HubConfig,
        warnings: WarningCatalog,
        clock: Arc<dyn Clock>,
        rng: Box<dyn Entropy>,
    ) -> Hub {
        Hub {
            store,
            keys: KeyRing::new(signer.key().clone()),
            signer,
            config,
            warnings,
            clock,
            rng,
            outbox: false,
        }
    }

    /// The same hub keeping every answer it decides in the transactional outbox, in the
    /// transaction that decided it ([`crate::store::outbox`]): each [`Outgoing`] then names
    /// its row, the caller confirms it once published ([`Hub::confirm_published`]), and the
    /// sweeper of any instance publishes again what stays unconfirmed. The service runs so.
    pub fn with_outbox(mut self) -> Hub {
        self.outbox = true;
        self
    }

    /// Forgets outbox rows whose answers reached the broker; returns how many.
    pub fn confirm_published(&mut self, ids: &[i64]) -> Result<usize, StoreError> {
        let store = &mut self.store;
        retry_transient(|| {
            let tx = store.begin_relaxed()?;
            let n = store::outbox::confirm(tx.db(), ids)?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// The same hub, still accepting `previous` keys (verify-only) after a rotation.
    pub fn with_previous_keys(mut self, previous: Vec<PrivateKey>) -> Result<Hub, KeyRingError> {
        self.keys = self.keys.with_previous(previous)?;
        Ok(self)
    }

    /// The signing key and the previous keys still accepted.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The store (setup in tests and the demo, operator commands).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, mutable.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The hub's signer (its id and key).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The same hub on another clock (a benchmark built on a test rig runs on real time).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Hub {
        self.clock = clock;
        self
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Handles one message in its own transaction.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> Handled {
        let batch = [Incoming::new(topic, payload)];
        self.handle_batch(&batch).pop().unwrap_or_else(|| Handled {
            outgoing: Vec::new(),
            result: Err(HandleError::Internal("no result".into())),
        })
    }

    /// Handles several messages in one transaction (group commit): each message's effects
    /// stay atomic (savepoints), the fsync is shared. A message whose transaction does not
    /// commit is not applied and sends nothing: its result is [`HandleError::Internal`].
    ///
    /// On PostgreSQL a batch whose transaction lost a race with another hub instance's is
    /// rolled back; its messages then run again one transaction each (in the batch's
    /// [`sender_order`]), each reading what the winner committed and run again itself until
    /// it commits. A small transaction is far less likely to lose again than the whole batch
    /// was, so instances under load do not keep aborting each other's batches. A connection
    /// lost to a server restart is made again, with pauses of up to a second, for
    /// [`RETRY_FOR`] in all. Running again is safe even when a lost connection hid a
    /// successful `COMMIT`: the batch's messages are then processed ids, answered as
    /// duplicates.
    pub fn handle_batch(&mut self, batch: &[Incoming]) -> Vec<Handled> {
        if batch.len() > 1 {
            let now = self.clock.now();
            match self.try_batch(batch, now) {
                Ok(done) => return done,
                Err(e @ StoreError::Conflict(_)) => {
                    tracing::debug!(error = %e, messages = batch.len(), "batch lost a race: one message at a time");
                    let mut done: Vec<(usize, Handled)> = Vec::with_capacity(batch.len());
                    for i in sender_order(batch) {
                        let one = self.handle_batch(std::slice::from_ref(&batch[i]));
                        done.extend(one.into_iter().map(|h| (i, h)));
                    }
                    done.sort_by_key(|(i, _)| *i);
                    return done.into_iter().map(|(_, h)| h).collect();
                }
                // A lost connection: the whole batch waits for the server below, once (one
                // message at a time, each would wait for it in turn).
                Err(e) if e.is_transient() => {}
                Err(e) => return not_committed(batch.len(), &e),
            }
        }
        match retry_transient(|| {
            let now = self.clock.now();
            self.try_batch(batch, now)
        }) {
            Ok(done) => done,
            Err(e) => not_committed(batch.len(), &e),
        }
    }

    fn try_batch(&mut self, batch: &[Incoming], now: u64) -> Result<Vec<Handled>, StoreError> {
        let (store, base, rng, outbox) = self.parts(now);
        let mut tx = store.begin()?;
        let mut results: Vec<Option<Handled>> = batch.iter().map(|_| None).collect();
        for i in sender_order(batch) {
            let m = &batch[i];
            let shared = Shared {
                checked: &m.checked,
                ..base
            };
            results[i] = Some(process(&mut tx, shared, &mut *rng, m)?);
        }
        let mut results: Vec<Handled> = results.into_iter().flatten().collect();
        if outbox {
            for h in &mut results {
                keep(tx.db(), &mut h.outgoing, base.cfg, now)?;
            }
        }
        tx.commit()?;
        Ok(results)
    }

    /// The store, what every context of a transaction at `now` shares (no secret checked
    /// ahead), the entropy and whether answers are kept in the outbox: borrowed apart.
    fn parts(&mut self, now: u64) -> (&mut Store, Shared<'_>, &mut dyn Entropy, bool) {
        let shared = Shared {
            cfg: &self.config,
            signer: &self.signer,
            keys: &self.keys,
            warnings: &self.warnings,
            now,
            checked: &[],
        };
        (&mut self.store, shared, self.rng.as_mut(), self.outbox)
    }

    /// Runs the expiry sweeper once (in its own transaction, run again after a conflict as
    /// [`Hub::handle_batch`] does), then, on the instance whose turn it was, publishes again
    /// the outbox's unconfirmed answers (`resend_pending`, a transaction of its own).
    pub fn sweep(&mut self) -> Result<(Vec<Outgoing>, SweepReport), StoreError> {
        let (mut out, mut report) = retry_transient(|| self.sweep_once())?;
        if report.skipped {
            return Ok((out, report));
        }
        // The sweep's own answers are committed (and in the outbox): they go out even when
        // publishing the pending ones again fails.
        let (again, expired) = match retry_transient(|| self.resend_pending()) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "outbox not published again this sweep");
                (Vec::new(), 0)
            }
        };
        report.outbox_resent = again.len();
        report.outbox_expired = expired;
        if expired > 0 {
            tracing::warn!(
                expired,
                "answers expired unpublished in the outbox (their senders resend)"
            );
        }
        out.extend(again);
        Ok((out, report))
    }

    fn sweep_once(&mut self) -> Result<(Vec<Outgoing>, SweepReport), StoreError> {
        let now = self.clock.now();
        let (store, shared, rng, outbox) = self.parts(now);
        let tx = store.begin()?;
        if !store::try_sweep_lock(tx.db())? {
            tx.commit()?;
            let report = SweepReport {
                skipped: true,
                ..SweepReport::default()
            };
            return Ok((Vec::new(), report));
        }
        let mut ctx = shared.ctx(tx.db(), rng, "", "", "");
        let (mut out, report) = sweep::sweep(&mut ctx)?;
        if outbox {
            keep(tx.db(), &mut out, shared.cfg, now)?;
        }
        tx.commit()?;
        Ok((out, report))
    }

    /// Publishes again what an instance committed and did not confirm published in time (it
    /// died, or the broker was away), in a fresh envelope: the stored bytes' `seq` may have
    /// fallen out of the receiver's window meanwhile. A receiver that had it recognises the
    /// repeat by its content (`docs/protocol.md` §4). Forgets what expired unpublished.
    ///
    /// Its own `READ COMMITTED` transaction ([`Store::begin_relaxed`]): nothing it does
    /// depends on what it reads beyond the rows it locks (`FOR UPDATE SKIP LOCKED`, so two
    /// instances never take one row), and a serializable scan of the outbox would make every
    /// message transaction that adds an answer meanwhile a candidate for a false conflict.
    fn resend_pending(&mut self) -> Result<(Vec<Outgoing>, usize), StoreError> {
        let now = self.clock.now();
        let (store, shared, rng, _) = self.parts(now);
        let tx = store.begin_relaxed()?;
        let mut ctx = shared.ctx(tx.db(), rng, "", "", "");
        let retry = shared.cfg.storage.outbox_retry_s.max(1);
        let mut out = Vec::new();
        for pending in store::outbox::due(tx.db(), now, retry, OUTBOX_BATCH)? {
            let mut again = ctx.resend(&Outgoing::new(pending.topic, pending.payload))?;
            again.outbox = Some(pending.id);
            out.push(again);
        }
        let expired = store::outbox::drop_expired(tx.db(), now)?;
        drop(ctx);
        tx.commit()?;
        Ok((out, expired))
    }
}

/// What every message of a batch whose transaction did not commit gets.
fn not_committed(messages: usize, e: &StoreError) -> Vec<Handled> {
    tracing::error!(error = %e, messages, "batch not committed");
    (0..messages)
        .map(|_| Handled {
            outgoing: Vec::new(),
            result: Err(HandleError::Internal(e.to_string())),
        })
        .collect()
}

/// The order in which a batch's messages are processed: grouped by sender (the topic up to
/// its last level: an ATM's `up` and `presence` are one sender), in a fixed order of senders,
/// each sender's messages in the order they arrived. Two instances' batches then take the
/// rows of the senders they share (replay windows first) in the same order and cannot
/// deadlock on them. Messages of different senders in one batch never depend on each other:
/// a device's next message follows the hub's published answer, which follows a commit.
fn sender_order(batch: &[Incoming]) -> Vec<usize> {
    fn sender(m: &Incoming) -> &str {
        m.topic.rsplit_once('/').map_or(&m.topic, |(s, _)| s)
    }
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| sender(&batch[a]).cmp(sender(&batch[b])));
    order
}

/// How many outbox rows one sweep publishes again at most (the rest wait for the next).
const OUTBOX_BATCH: u32 = 256;

/// Keeps `out` in the transactional outbox of the transaction `db` belongs to, each until
/// the `exp` sealed inside it (the down-link lifetime for one sealed elsewhere).
fn keep(db: Db<'_>, out: &mut [Outgoing], cfg: &HubConfig, now: u64) -> Result<(), StoreError> {
    let retry = cfg.storage.outbox_retry_s.max(1);
    for o in out {
        let expires = o.expires.unwrap_or(now + cfg.replay.downlink_ttl_s);
        o.outbox = Some(store::outbox::put(
            db,
            &o.topic,
            &o.payload,
            now,
            now + retry,
            expires,
        )?);
    }
    Ok(())
}

/// How long a transaction is run again while it keeps failing transiently
/// ([`StoreError::is_transient`]): long enough for a PostgreSQL restart or a fail-over.
pub const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `attempt` until it succeeds, fails for good, or has failed transiently for
/// [`RETRY_FOR`]. A conflict is run again at once, then after a few milliseconds (so that
/// two instances stop colliding); a lost connection after pauses doubling to a second.
pub(crate) fn retry_transient<T>(
    attempt: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    retry_while(StoreError::is_transient, attempt)
}

/// [`retry_transient`] for the errors `again` accepts only (a subset of the transient ones).
pub(crate) fn retry_while<T>(
    again: impl Fn(&StoreError) -> bool,
    mut attempt: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let mut tries: u32 = 0;
    loop {
        match attempt() {
            Err(e) if e.is_transient() && again(&e) && started.elapsed() < RETRY_FOR => {
                tries += 1;
                let pause = match e {
                    StoreError::Conflict(_) => conflict_pause(tries),
                    _ => {
                        tracing::warn!(error = %e, tries, "database unavailable: trying again");
                        std::time::Duration::from_millis(50u64 << tries.min(4))
                    }
                };
                std::thread::sleep(pause);
            }
            other => return other,
        }
    }
}

/// The pause before running a transaction again after its `tries`-th conflict: random
/// ("full jitter") below a ceiling that doubles from 2 ms to 128 ms, so that two colliding
/// instances (or an operator's command and an instance) spread out instead of colliding
/// again in lockstep.
fn conflict_pause(tries: u32) -> std::time::Duration {
    let ceiling_us = 1_000u64 << tries.clamp(1, 7);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::from(d.subsec_nanos()));
    std::time::Duration::from_micros(jitter % ceiling_us)
}

/// One message, start to end. `Err` only for a database failure that spoils the batch.
fn process(
    tx: &mut Tx<'_>,
    shared: Shared<'_>,
    rng: &mut dyn Entropy,
    m: &Incoming,
) -> Result<Handled, StoreError> {
    let (cfg, now) = (shared.cfg, shared.now);
    let topic = Topic::parse(&m.topic);
    let mut entry = AuditEntry {
        at: now,
        source: match &topic {
            Some(Topic::AtmUp(_) | Topic::AtmPresence(_)) => "atm",
            Some(Topic::PhoneUp(_)) => "phone",
            _ => "unknown",
        }
        .into(),
        sender: topic.as_ref().map(|t| t.id().to_owned()),
        topic: Some(m.topic.clone()),
        ..AuditEntry::default()
    };

    if let Some(Topic::AtmPresence(id)) = &topic {
        let text = String::from_utf8_lossy(&m.payload);
        let presence = if text.trim() == "online" {
            "online"
        } else {
            "offline"
        };
        let known = rows::atm_presence(tx.db(), id, presence, now)?;
        let outgoing = if known && presence == "online" {
            let mut ctx = shared.ctx(tx.db(), &mut *rng, id, "", "");
            steps::outstanding_orders(&mut ctx, id)?
        } else {
            Vec::new()
        };
        entry.msg_type = Some("presence".into());
        entry.outcome = if known { "accepted" } else { "rejected" }.into();
        entry.detail = Some(if outgoing.is_empty() {
            presence.into()
        } else {
            format!(
                "{presence}; outstanding orders sent again: {}",
                outgoing.len()
            )
        });
        if !known {
            entry.reason = Some("unknown_atm".into());
        }
        audit::append(tx.db(), &entry)?;
        return Ok(Handled {
            outgoing,
            result: if known {
                Ok(Disposition::Presence)
            } else {
                Err(HandleError::UnknownSender(id.clone()))
            },
        });
    }

    // Steps 1–2: nothing is answered before the signature holds.
    let verified = match verify(tx.db(), now, &m.topic, topic, &m.payload) {
        Ok(v) => v,
        Err(e @ HandleError::SignedMalformed { .. }) => {
            // Authentic, so answered (with `re`), though it cannot be read, and changes
            // nothing else: no replay window (it has no usable `seq`), no processed record.
            let HandleError::SignedMalformed {
                class, sender, jti, ..
            } = &e
            else {
                unreachable!("matched above")
            };
            let mut ctx = shared.ctx(tx.db(), &mut *rng, sender, jti, "");
            let out = rejected(&mut ctx, class, &e)?;
            entry.jti = Some(jti.clone());
            return finish(tx.db(), entry, e, out, false);
        }
        Err(e) => {
            entry.outcome = "rejected".into();
            entry.reason = Some(reason_code(&e.reason()));
            entry.detail = Some(e.to_string());
            audit::append(tx.db(), &entry)?;
            tracing::debug!(topic = %m.topic, error = %e, "unauthenticated message dropped");
            return Ok(Handled {
                outgoing: Vec::new(),
                result: Err(e),
            });
        }
    };
    entry.msg_type = Some(verified.body.type_name());
    entry.jti = Some(verified.jti.clone());
    let sender_id = match &verified.sender {
        Sender::Atm(a) => a.id.clone(),
        Sender::Enrolling(id, _) | Sender::Phone(id, _) => id.clone(),
    };
    // A phone with no enrolled device signs its first login with the key it carries, and a
    // board enrolling signs with its new key: anyone can make up such keys by the million,
    // so what they are refused leaves nothing durable but a pruned trail (`login_refusals`),
    // and no replay window or processed record.
    let stranger = matches!(
        verified.sender,
        Sender::Phone(_, None) | Sender::Enrolling(..)
    );

    let mut ctx = shared.ctx(tx.db(), &mut *rng, &sender_id, &verified.jti, &verified.kid);

    // Refusals of a board enrolling under a key the ATM does not have all say
    // `enrolment_refused`: they reach the ATM's down-link, and must not read as a refusal of
    // one of the enrolled ATM's own messages (whose `jti` a stranger may reuse).
    let answer_class = if matches!(verified.sender, Sender::Enrolling(..)) {
        "enrolling"
    } else {
        verified.class
    };

    // Step 3: addressing and times.
    let replay_cfg = if verified.class == "atm" {
        cfg.replay.atm()
    } else {
        cfg.replay.phone()
    };
    let early = match &verified.body {
        Body::Atm(c) => receive::check_claims(c, shared.signer.id(), &sender_id, &replay_cfg, now),
        Body::Phone(c) => {
            receive::check_claims(c, shared.signer.id(), &sender_id, &replay_cfg, now)
        }
    }
    .map_err(HandleError::from);
    if let Err(e) = early {
        let out = rejected(&mut ctx, answer_class, &e)?;
        return finish(ctx.db, entry, e, out, stranger);
    }

    // Step 4: duplicates are answered again; anything else must pass the window. A board
    // enrolling under a key the ATM does not have has no messages of its own on record: a
    // `jti` it reuses is another's.
    let enrolling = matches!(verified.sender, Sender::Enrolling(..));
    if let Some(previous) = (!enrolling)
        .then(|| store::processed(ctx.db, &sender_id, &verified.jti))
        .transpose()?
        .flatten()
    {
        let stored: Vec<Outgoing> = serde_json::from_str(&previous)
            .map_err(|e| StoreError::Corrupt(format!("processed answers: {e}")))?;
        let outgoing = stored
            .iter()
            .map(|o| ctx.reseal(o))
            .collect::<Result<Vec<_>, _>>()?;
        entry.outcome = "duplicate".into();
        audit::append(ctx.db, &entry)?;
        return Ok(Handled {
            outgoing,
            result: Ok(Disposition::Duplicate),
        });
    }
    let window = store::window(ctx.db, &sender_id, &verified.kid)?;
    if let Err(e) = window.check(verified.seq, replay_cfg.seq_window) {
        let e = HandleError::Replay(e);
        let out = rejected(&mut ctx, answer_class, &e)?;
        return finish(ctx.db, entry, e, out, stranger);
    }

    // Step 5: the handler, inside a savepoint.
    drop(ctx);
    let sp = tx.savepoint()?;
    let mut ctx = shared.ctx(sp.db(), &mut *rng, &sender_id, &verified.jti, &verified.kid);
    ctx.seq = verified.seq;
    ctx.iat = match &verified.body {
        Body::Atm(c) => c.iat,
        Body::Phone(c) => c.iat,
    };
    let outcome = guarded(|| match (&verified.body, &verified.sender) {
        (Body::Atm(c), Sender::Atm(atm)) => route::atm(&mut ctx, atm, &c.msg),
        (Body::Atm(c), Sender::Enrolling(id, atm)) => {
            route::enrolling(&mut ctx, id, atm.as_ref(), &c.msg)
        }
        (Body::Phone(c), Sender::Phone(id, device)) => {
            route::phone(&mut ctx, id, device.as_ref(), &c.msg)
        }
        _ => Err(refuse(
            RejectReason::Malformed,
            "message does not fit its topic",
        )),
    });
    let detail = ctx.detail.take();
    drop(ctx);
    let (mut outgoing, result, keep) = match outcome {
        Ok(out) => (out, Ok(Disposition::Applied), true),
        Err(Fail::Refused(r)) => {
            let e = HandleError::Refused {
                reason: r.reason,
                message: r.message,
            };
            (r.extra, Err(e), r.keep_effects)
        }
        // Another instance's transaction won a race (PostgreSQL) or the server went away:
        // the whole batch runs again, this message included ([`Hub::handle_batch`]).
        Err(Fail::Store(e)) if e.is_transient() => return Err(e),
        Err(Fail::Store(e)) => {
            tracing::error!(error = %e, sender = %sender_id, "message handler failed");
            (Vec::new(), Err(HandleError::Internal(e.to_string())), false)
        }
    };
    if keep {
        sp.commit()?;
    } else {
        outgoing.clear();
        drop(sp); // rolls back
    }

    // Step 6: window, processed record and audit, with the effects.
    let mut ctx = shared.ctx(tx.db(), &mut *rng, &sender_id, &verified.jti, &verified.kid);
    ctx.detail = detail;
    if let Err(e) = &result {
        outgoing.extend(rejected(&mut ctx, answer_class, e)?);
    }
    let remember = match &result {
        Err(HandleError::Internal(_)) => false,
        Err(_) => !stranger,
        Ok(_) => true,
    };
    if remember {
        store::save_window(
            tx.db(),
            &sender_id,
            &verified.kid,
            &window.record(verified.seq),
        )?;
        let answers = serde_json::to_string(&outgoing)
            .map_err(|e| StoreError::Corrupt(format!("answers: {e}")))?;
        store::record_processed(tx.db(), &sender_id, &verified.jti, now, &answers)?;
    }
    entry.detail = ctx.detail.take();
    match result {
        Ok(d) => {
            entry.outcome = "accepted".into();
            audit::append(tx.db(), &entry)?;
            Ok(Handled {
                outgoing,
                result: Ok(d),
            })
        }
        Err(e) => finish(tx.db(), entry, e, outgoing, stranger),
    }
}

/// Runs one message's handler so that a panic (a bug, or a number from the wire nobody
/// foresaw) becomes a typed refusal of that message, its effects rolled back with the
/// savepoint, instead of a dead writer thread that stops the hub for everyone.
fn guarded(handler: impl FnOnce() -> Outcome) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "message handler panicked: message refused");
        Err(refuse(
            RejectReason::Malformed,
            "the hub could not process this message",
        ))
    })
}

fn finish(
    db: Db<'_>,
    mut entry: AuditEntry,
    e: HandleError,
    outgoing: Vec<Outgoing>,
    stranger: bool,
) -> Result<Handled, StoreError> {
    entry.outcome = "rejected".into();
    entry.reason = Some(reason_code(&e.reason()));
    let msg = e.to_string();
    entry.detail = Some(match entry.detail.take() {
        Some(d) => format!("{msg}; {d}"),
        None => msg,
    });
    if stranger {
        audit::append_login_refusal(db, &entry)?;
    } else {
        audit::append(db, &entry)?;
    }
    Ok(Handled {
        outgoing,
        result: Err(e),
    })
}

/// The `Rejected` answer for an authenticated sender.
fn rejected(ctx: &mut Ctx<'_>, class: &str, e: &HandleError) -> Result<Vec<Outgoing>, StoreError> {
    let body = Rejected {
        reason: e.reason(),
        message: e.to_string(),
    };
    let to = ctx.sender.clone();
    if class == "enrolling" {
        let body = Rejected {
            reason: RejectReason::EnrolmentRefused,
            message: format!("{}: {e}", reason_code(&e.reason())),
        };
        return Ok(vec![ctx.send_atm(&to, AtmDown::Rejected(body))?]);
    }
    Ok(vec![if class == "atm" {
        ctx.send_atm(&to, AtmDown::Rejected(body))?
    } else {
        ctx.push_phone(&to, PhonePush::Rejected(body))?
    }])
}

/// Steps 1–2: topic, then what [`receive::open`] checks (size, JWS, the key from the
/// hub's key directory, signature, claims).
fn verify(
    db: Db<'_>,
    now: u64,
    raw_topic: &str,
    topic: Option<Topic>,
    payload: &[u8],
) -> Result<Verified, HandleError> {
    let topic = topic.ok_or_else(|| HandleError::Topic(raw_topic.to_owned()))?;
    let malformed = |class: &'static str, sender: &str, e| match e {
        OpenError::Refused(e) => e,
        OpenError::Malformed { jti, message } => HandleError::SignedMalformed {
            class,
            sender: sender.to_owned(),
            jti,
            message,
        },
    };
    match topic {
        Topic::AtmUp(id) => {
            let a =
                receive::open::<AtmUp, _>(&keys::AtmKeys(db, now), &id, payload, MAX_UPLINK_BYTES)
                    .map_err(|e| malformed("atm", &id, e))?;
            keys::enrol_signed_by_its_key(a.kid.as_str(), &a.claims)?;
            Ok(Verified {
                jti: a.claims.jti.clone(),
                seq: a.claims.seq,
                sender: match a.entry {
                    keys::AtmSender::Enrolled(atm) => Sender::Atm(atm),
                    keys::AtmSender::Enrolling(atm) => Sender::Enrolling(id, atm),
                },
                class: "atm",
                kid: a.kid.as_str().to_owned(),
                body: Body::Atm(a.claims),
            })
        }
        Topic::PhoneUp(id) => {
            let a =
                receive::open::<PhoneUp, _>(&keys::PhoneKeys(db), &id, payload, MAX_UPLINK_BYTES)
                    .map_err(|e| malformed("phone", &id, e))?;
            keys::login_signed_by_its_key(&id, a.kid.as_str(), &a.claims)?;
            Ok(Verified {
                jti: a.claims.jti.clone(),
                seq: a.claims.seq,
                sender: Sender::Phone(id, a.entry),
                class: "phone",
                kid: a.kid.as_str().to_owned(),
                body: Body::Phone(a.claims),
            })
        }
        other => Err(HandleError::Topic(other.to_string())),
    }
}
