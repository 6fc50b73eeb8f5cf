//! [`PhoneClient`]: the phone's connection to the hub over MQTT, with typed requests and
//! verified pushes.
//!
//! The connection is a [`qrcash_io::link`] subscribed to this device's push topic (it
//! reconnects and subscribes again by itself). Everything else happens in the caller's task: requests are sealed with the device key and
//! a persisted `seq`; every push is verified ([`crate::verify`]) before anyone sees it, and
//! pushes nobody asked for yet wait in a small backlog for a later [`PhoneClient::next_push`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use qrcash_io::BrokerConfig;
use qrcash_io::link::{self, LinkEvent, LinkHandle, LinkOptions};
use qrcash_protocol::envelope::Claims;
use qrcash_protocol::keyset::{HubTrust, TrustState};
use qrcash_protocol::messages::{
    AlertAnswered, AnswerNewDeviceAlert, Balance, BalanceQuery, BankWithdrawal, ChangePassword,
    CodeIssued, ConfirmRequest, DeclineWithdrawal, LoginResult, NewDeviceAlert, Payment, PhonePush,
    PhoneUp, Receipt, RegisterWithdrawal, SessionsEnded, SignOutOtherDevices, TopUp, Transfer,
};
use qrcash_protocol::replay::ReplayConfig;
use qrcash_protocol::{
    Amount, Clock, CodeToken, Position, PrivateKey, PublicKey, SecretField, SecretSealer, Signer,
    TxId, topics,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::PhoneError;
use crate::requests;
use crate::store::{DeviceStore, Pending};
use crate::verify::PushVerifier;

/// Pushes kept for later callers before the oldest is dropped.
const BACKLOG: usize = 64;

/// A message of the outbox is not sent again in the last this many seconds before its `exp`.
const RESEND_MARGIN_S: u64 = 30;

/// What the hub's key set taught ([`TrustState`]), in the state directory.
const HUB_KEYS_FILE: &str = "hub-keys.json";

/// How long [`PhoneClient::connect`] waits for the hub's retained key set.
const KEY_SET_WAIT: Duration = Duration::from_millis(500);

/// Who the phone is and where the hub is.
#[derive(Debug, Clone)]
pub struct PhoneSettings {
    /// This device's id: its topic id and `iss` (letters, digits, `-`, `_`, `.`).
    pub device_id: String,
    /// A human name shown to the account holder in new-device alerts.
    pub device_name: String,
    /// The hub's sender id (`"hub"` unless the operator changed it).
    pub hub_id: String,
    /// The broker.
    pub broker: BrokerConfig,
    /// Keep the broker session between runs so pushes sent while the client is not running
    /// are delivered on the next connect (the CLI does; an in-process demo need not).
    pub persistent_session: bool,
    /// How long [`PhoneClient::connect`] and [`PhoneClient::send`] wait for the broker.
    pub connect_timeout: Duration,
    /// How often a message of the outbox is published again, the same signed bytes, while
    /// its answer has not come (and it is not within 30 s of its `exp`): a message or its
    /// answer lost between brokers (a bridge restarting, a hub changing node) is not lost
    /// for good, and the hub answers a repeat with its first answer.
    pub resend_after: Duration,
}

impl PhoneSettings {
    /// Settings with the defaults: hub id `"hub"`, clean session, 10 s connect timeout.
    pub fn new(device_id: impl Into<String>, broker: BrokerConfig) -> Self {
        let device_id = device_id.into();
        PhoneSettings {
            device_name: device_id.clone(),
            device_id,
            hub_id: "hub".into(),
            broker,
            persistent_session: false,
            connect_timeout: Duration::from_secs(10),
            resend_after: Duration::from_secs(5),
        }
    }
}

/// A connected phone.
pub struct PhoneClient {
    settings: PhoneSettings,
    signer: Signer,
    store: DeviceStore,
    verifier: PushVerifier,
    /// What this phone trusts of the hub's keys (`qrcash_protocol::keyset::HubTrust`).
    trust: HubTrust,
    clock: Arc<dyn Clock>,
    link: LinkHandle,
    events: mpsc::Receiver<LinkEvent>,
    push_topic: String,
    backlog: VecDeque<Claims<PhonePush>>,
    rejected: u64,
    /// Why the last refused message was refused (surfaced by a timeout it explains).
    last_refusal: Option<String>,
    /// A key set arrived on this connection.
    key_set_seen: bool,
    /// When each message of the outbox was last published by this run (a message from an
    /// earlier run is due at once).
    last_sent: HashMap<String, Instant>,
}

impl std::fmt::Debug for PhoneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneClient")
            .field("device_id", &self.settings.device_id)
            .field("kid", self.signer.kid())
            .finish_non_exhaustive()
    }
}

impl PhoneClient {
    /// Connects to the broker, subscribes to this device's push topic and waits until the
    /// subscription is acknowledged (so no answer to a first request can be missed).
    ///
    /// `key` is the device key (see [`DeviceStore::device_key`]); `hub_key` the hub's public
    /// key the phone was provisioned with; `store` persists `seq` and the hub's replay window.
    pub async fn connect(
        settings: PhoneSettings,
        key: PrivateKey,
        hub_key: PublicKey,
        store: DeviceStore,
        clock: Arc<dyn Clock>,
    ) -> Result<PhoneClient, PhoneError> {
        topics::validate_id(&settings.device_id).map_err(PhoneError::Config)?;
        let push_topic = topics::phone_push(&settings.device_id);
        let mut options = LinkOptions::new(settings.broker.clone(), settings.device_id.clone())
            .subscribe([push_topic.clone(), topics::HUB_KEYS.to_owned()]);
        options.clean_session = !settings.persistent_session;
        options.queue = 64;
        let (link, events) = link::spawn(options)?;
        // The provisioned key is the root; what the hub's key set taught under it is kept
        // in the state directory (a damaged file is learned again from the retained set).
        let saved = store
            .load_json::<TrustState>(HUB_KEYS_FILE)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the saved hub keys do not parse: ignored");
                None
            });
        let trust = HubTrust::new(vec![hub_key.clone()], saved);
        let mut verifier = PushVerifier::new(
            &settings.hub_id,
            &settings.device_id,
            hub_key,
            ReplayConfig::default(),
        );
        verifier.set_keys(trust.message_keys());
        let mut phone = PhoneClient {
            signer: Signer::new(settings.device_id.clone(), key),
            settings,
            store,
            verifier,
            trust,
            clock,
            link,
            events,
            push_topic,
            backlog: VecDeque::new(),
            rejected: 0,
            last_refusal: None,
            key_set_seen: false,
            last_sent: HashMap::new(),
        };
        phone.wait_ready().await?;
        phone.await_key_set(KEY_SET_WAIT).await;
        // What an earlier run sent and never saw answered goes out again now.
        phone.resend_due().await?;
        tracing::info!(device = %phone.settings.device_id, kid = %phone.signer.kid(), "phone connected");
        Ok(phone)
    }

    /// This device's id.
    pub fn device_id(&self) -> &str {
        &self.settings.device_id
    }

    /// The device key's public half (what `Login` enrols).
    pub fn public_key(&self) -> &PublicKey {
        self.signer.key().public()
    }

    /// The state store (seq, hub window, records).
    pub fn store(&self) -> &DeviceStore {
        &self.store
    }

    /// The hub keys this phone trusts for QR codes: the provisioned one and those the hub's
    /// key set taught. Pushes are trusted from [`Self::message_keys`] only.
    pub fn hub_keys(&self) -> Vec<PublicKey> {
        self.trust.code_keys()
    }

    /// The hub keys pushes may be signed by: the hub's current key once a key set taught it,
    /// else the provisioned key.
    pub fn message_keys(&self) -> Vec<PublicKey> {
        self.trust.message_keys()
    }

    /// The hub key this phone seals passwords and PINs to.
    pub fn sealing_key(&self) -> PublicKey {
        self.trust
            .sealing_key()
            .unwrap_or_else(|| self.trust.roots()[0].clone())
    }

    /// How many pushes were refused (bad signature, replay, misaddressed…) so far.
    pub fn rejected_pushes(&self) -> u64 {
        self.rejected
    }

    /// Waits until the link is up. Meanwhile it reads the link's events: the link stops
    /// polling, and so stops reconnecting, while they wait unread (a phone asleep through
    /// many reconnections). Pushes among them are verified and kept for [`Self::next_push`].
    async fn wait_ready(&mut self) -> Result<(), PhoneError> {
        let timeout = self.settings.connect_timeout;
        let deadline = Instant::now() + timeout;
        while !self.link.is_up() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    return Err(PhoneError::Timeout {
                        waiting_for: format!(
                            "connection to the broker at {}",
                            self.settings.broker.url
                        ),
                        after: timeout,
                    });
                }
                Ok(None) => return Err(PhoneError::Closed),
                Ok(Some(event)) => {
                    if let Some(claims) = self.take_event(event) {
                        self.keep(claims);
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles one link event: a key set is applied, a push verified and returned; anything
    /// else (up and down show in `link.is_up()`, other topics are not ours) is `None`.
    fn take_event(&mut self, event: LinkEvent) -> Option<Claims<PhonePush>> {
        match event {
            LinkEvent::Message { topic, payload } if topic == self.push_topic => {
                self.verified(&payload)
            }
            LinkEvent::Message { topic, payload } if topic == topics::HUB_KEYS => {
                self.key_set(&payload);
                None
            }
            _ => None,
        }
    }

    /// A push verified, or `None` (counted and logged) when it fails verification.
    fn verified(&mut self, bytes: &[u8]) -> Option<Claims<PhonePush>> {
        match self.accept(bytes) {
            Ok(c) => {
                tracing::debug!(jti = %c.jti, re = ?c.re, kind = push_kind(&c.msg), "push received");
                self.settle(&c);
                Some(c)
            }
            Err(e) => {
                self.rejected += 1;
                tracing::warn!(error = %e, bytes = bytes.len(), "push refused");
                self.last_refusal = Some(format!("push refused: {e}"));
                None
            }
        }
    }

    /// The hub's retained key set (`docs/protocol.md` §3, "The hub's key set"): applied to
    /// what this phone trusts and kept in the state directory when it changed something;
    /// refused (counted, and named by a later timeout) when it is older than the newest
    /// applied or not endorsed by a key this phone trusts.
    fn key_set(&mut self, bytes: &[u8]) {
        self.key_set_seen = true;
        let mut trust = self.trust.clone();
        let change = match trust.apply(bytes, &self.settings.hub_id) {
            Ok(change) => change,
            Err(e) => {
                self.rejected += 1;
                tracing::warn!(error = %e, "hub key set refused");
                self.last_refusal = Some(format!("hub key set refused: {e}"));
                return;
            }
        };
        if change.is_empty() {
            return;
        }
        if let Err(e) = self.store.save_json(HUB_KEYS_FILE, trust.state()) {
            tracing::warn!(error = %e, "cannot keep the hub's key set (learned again next time)");
        }
        self.trust = trust;
        self.verifier.set_keys(self.trust.message_keys());
        tracing::info!(
            current = ?change.current.as_ref().map(|k| k.kid().to_string()),
            added = change.added.len(),
            dropped = change.dropped.len(),
            "hub key set applied"
        );
    }

    /// After connecting: waits up to `wait` for the hub's retained key set, so the first
    /// secret is not sealed to a key the hub has replaced. Pushes meanwhile are kept.
    async fn await_key_set(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.key_set_seen {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(claims) = self.take_event(event) {
                        self.keep(claims);
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Keeps a push for a later [`Self::next_push`], dropping the oldest beyond the backlog.
    fn keep(&mut self, claims: Claims<PhonePush>) {
        if self.backlog.len() == BACKLOG {
            self.backlog.pop_front();
        }
        self.backlog.push_back(claims);
    }

    /// Seals `msg` with the device key and the next `seq`, publishes it on this device's
    /// up-link topic, and returns its `jti` (which the hub's answer names in `re`).
    pub async fn send(&mut self, msg: PhoneUp) -> Result<String, PhoneError> {
        Ok(self.send_sealed(msg).await?.jti)
    }

    /// [`Self::send`]: the message goes into the outbox (durably, before it is published),
    /// where it stays, published again every [`PhoneSettings::resend_after`] while this
    /// client waits for pushes, until the hub's answer (a push naming it in `re`, or the
    /// receipt of the withdrawal it confirms or declines) or its `exp`.
    async fn send_sealed(&mut self, msg: PhoneUp) -> Result<Pending, PhoneError> {
        self.wait_ready().await?;
        let seq = self.store.next_seq()?;
        let tx_id = match &msg {
            PhoneUp::ConfirmWithdrawal(c) => Some(c.tx_id.to_string()),
            PhoneUp::DeclineWithdrawal(d) => Some(d.tx_id.to_string()),
            _ => None,
        };
        let claims = requests::claims(
            &self.signer,
            &self.settings.hub_id,
            seq,
            self.clock.now(),
            msg,
        );
        let pending = Pending {
            jti: claims.jti.clone(),
            message: self.signer.seal(&claims),
            exp: claims.exp,
            tx_id,
        };
        self.store.add_pending(pending.clone())?;
        self.publish_up(pending.message.as_bytes()).await?;
        self.last_sent.insert(pending.jti.clone(), Instant::now());
        tracing::debug!(jti = %claims.jti, seq, kind = kind(&claims.msg), "request sent");
        Ok(pending)
    }

    /// Publishes again every outbox message whose last send is [`PhoneSettings::resend_after`]
    /// old (or that an earlier run sent), and drops those past their `exp` (the hub would
    /// refuse them).
    async fn resend_due(&mut self) -> Result<(), PhoneError> {
        let now = self.clock.now();
        // Not sent again in its last RESEND_MARGIN_S: a copy held up in a queue across a
        // reconnection must still reach the hub before its `exp`, or the hub refuses it
        // as expired (checked before duplicates) although it may have applied the first.
        if self
            .store
            .settle_pending(|p| p.exp.saturating_sub(RESEND_MARGIN_S) <= now)?
        {
            tracing::info!("messages near their expiry left the outbox unanswered");
        }
        self.forget_settled();
        if !self.link.is_up() {
            // Sent when the link is back (the next wake after its `Up`).
            return Ok(());
        }
        let every = self.resend_every();
        let due: Vec<Pending> = self
            .store
            .pending()
            .iter()
            .filter(|p| {
                self.last_sent
                    .get(&p.jti)
                    .is_none_or(|at| at.elapsed() >= every)
            })
            .cloned()
            .collect();
        for p in due {
            tracing::info!(jti = %p.jti, "no answer yet: sending the message again");
            self.publish_up(p.message.as_bytes()).await?;
            self.last_sent.insert(p.jti, Instant::now());
        }
        Ok(())
    }

    /// When the next outbox message is due for a resend, if any is waiting and the link is
    /// up (while it is down, its `Up` event wakes the waiter).
    fn next_resend(&self) -> Option<Instant> {
        if !self.link.is_up() {
            return None;
        }
        let every = self.resend_every();
        self.store
            .pending()
            .iter()
            .map(|p| {
                self.last_sent
                    .get(&p.jti)
                    .map_or_else(Instant::now, |at| *at + every)
            })
            .min()
    }

    fn resend_every(&self) -> Duration {
        self.settings.resend_after.max(Duration::from_millis(100))
    }

    /// Drops the send times of messages no longer in the outbox.
    fn forget_settled(&mut self) {
        let pending: std::collections::HashSet<&str> = self
            .store
            .pending()
            .iter()
            .map(|p| p.jti.as_str())
            .collect();
        self.last_sent
            .retain(|jti, _| pending.contains(jti.as_str()));
    }

    /// A verified push answers the outbox messages it names in `re`, and a receipt those
    /// about its withdrawal: they leave the outbox.
    fn settle(&mut self, claims: &Claims<PhonePush>) {
        let receipt_of = match &claims.msg {
            PhonePush::Receipt(r) => Some(r.reference.as_str()),
            _ => None,
        };
        let answered = |p: &Pending| {
            claims.re.as_deref() == Some(p.jti.as_str())
                || (receipt_of.is_some() && p.tx_id.as_deref() == receipt_of)
        };
        match self.store.settle_pending(answered) {
            Ok(true) => {
                tracing::debug!(re = ?claims.re, "answered messages left the outbox");
                self.forget_settled();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the outbox (its messages are sent again and answered as repeats)")
            }
        }
    }

    async fn publish_up(&mut self, bytes: &[u8]) -> Result<(), PhoneError> {
        self.wait_ready().await?;
        self.link
            .publish(&topics::phone_up(&self.settings.device_id), bytes.to_vec())
            .await
            .map_err(|e| PhoneError::Mqtt(e.to_string()))
    }

    /// The next verified push for which `matches` holds, waiting up to `timeout`. Pushes that
    /// do not match are kept for later calls; pushes that fail verification are dropped.
    pub async fn next_push(
        &mut self,
        waiting_for: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Claims<PhonePush>) -> bool,
    ) -> Result<Claims<PhonePush>, PhoneError> {
        let deadline = Instant::now() + timeout;
        let rejected_before = self.rejected;
        loop {
            // Pushes kept meanwhile count too (a resend reads the link's events while it
            // waits for the broker, and keeps the pushes it finds).
            if let Some(i) = self.backlog.iter().position(&mut matches)
                && let Some(found) = self.backlog.remove(i)
            {
                return Ok(found);
            }
            // Wakes for the outbox's resends too (never past the deadline).
            let wake = self.next_resend().map_or(deadline, |due| due.min(deadline));
            let event = match tokio::time::timeout_at(wake, self.events.recv()).await {
                Err(_) if Instant::now() < deadline => {
                    // A resend that fails is tried again at the next wake; it never ends
                    // the caller's wait.
                    if let Err(e) = self.resend_due().await {
                        tracing::warn!(error = %e, "cannot send the outbox again yet");
                    }
                    continue;
                }
                Err(_) => {
                    let refused = self.rejected - rejected_before;
                    return Err(match &self.last_refusal {
                        Some(last) if refused > 0 => PhoneError::Refused {
                            waiting_for: waiting_for.to_owned(),
                            after: timeout,
                            refused,
                            last: last.clone(),
                        },
                        _ => PhoneError::Timeout {
                            waiting_for: waiting_for.to_owned(),
                            after: timeout,
                        },
                    });
                }
                Ok(None) => return Err(PhoneError::Closed),
                Ok(Some(event)) => event,
            };
            let Some(claims) = self.take_event(event) else {
                continue;
            };
            if matches(&claims) {
                return Ok(claims);
            }
            self.keep(claims);
        }
    }

    fn accept(&mut self, bytes: &[u8]) -> Result<Claims<PhonePush>, PhoneError> {
        let (claims, window) = self
            .verifier
            .verify(bytes, self.store.hub_window(), self.clock.now())
            .map_err(|e| PhoneError::Unexpected(e.to_string()))?;
        self.store.save_hub_window(window)?;
        Ok(claims)
    }

    /// The push answering message `jti` (its `re`).
    pub async fn reply_to(
        &mut self,
        jti: &str,
        timeout: Duration,
    ) -> Result<PhonePush, PhoneError> {
        let claims = self
            .next_push("answer from the hub", timeout, |c| {
                c.re.as_deref() == Some(jti)
            })
            .await?;
        match claims.msg {
            PhonePush::Rejected(r) => Err(PhoneError::Rejected {
                reason: r.reason,
                message: r.message,
            }),
            other => Ok(other),
        }
    }

    /// Sends `msg` and waits for its answer; a `Rejected` answer is an error.
    ///
    /// Until the answer comes the message stays in the outbox and is published again every
    /// [`PhoneSettings::resend_after`] while it is valid (`exp`): the hub applies a message
    /// once and answers a repeat with its first answer.
    pub async fn request(
        &mut self,
        msg: PhoneUp,
        timeout: Duration,
    ) -> Result<PhonePush, PhoneError> {
        let sent = self.send_sealed(msg).await?;
        match self.reply_to(&sent.jti, timeout).await {
            // Still queued: it may yet be applied. Saying only "timed out" would invite the
            // user to repeat it, which the hub would take as a second operation.
            Err(PhoneError::Timeout { waiting_for, after })
                if self.store.pending().iter().any(|p| p.jti == sent.jti) =>
            {
                Err(PhoneError::Timeout {
                    waiting_for: format!(
                        "{waiting_for} (the request stays queued and is sent again while the app runs, so it may still be applied: do not repeat it; check the balance or wait for its receipt)"
                    ),
                    after,
                })
            }
            other => other,
        }
    }

    /// Logs in to `account` (enrolling this device's key on first use).
    pub async fn login(
        &mut self,
        account: &str,
        password: &str,
        position: Option<Position>,
        timeout: Duration,
    ) -> Result<LoginResult, PhoneError> {
        let msg = requests::login(
            account,
            password,
            &self.settings.device_name,
            self.signer.key(),
            position,
            &self.sealer(),
        )?;
        match self.request(msg, timeout).await? {
            PhonePush::LoginResult(r) => Ok(r),
            other => Err(unexpected("LoginResult", &other)),
        }
    }

    /// Registers a withdrawal of `amount` from `account` and returns the issued code, after
    /// checking that the token really is signed by the hub.
    pub async fn register_withdrawal(
        &mut self,
        account: &str,
        amount: Amount,
        timeout: Duration,
    ) -> Result<CodeIssued, PhoneError> {
        let msg = PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: account.to_owned(),
            amount,
        });
        match self.request(msg, timeout).await? {
            PhonePush::CodeIssued(code) => {
                let token = CodeToken::verify_signature(&code.token, &self.trust.code_keys())
                    .map_err(|e| {
                        PhoneError::Unexpected(format!("issued code does not verify: {e}"))
                    })?;
                if token.tx_id != code.tx_id {
                    return Err(PhoneError::Unexpected(
                        "issued code names another transaction".into(),
                    ));
                }
                Ok(code)
            }
            other => Err(unexpected("CodeIssued", &other)),
        }
    }

    /// Waits for the hub's `ConfirmRequest` (for `tx_id`, or any when `None`) whose `confirm_by`
    /// is still ahead.
    pub async fn await_confirm_request(
        &mut self,
        tx_id: Option<TxId>,
        timeout: Duration,
    ) -> Result<ConfirmRequest, PhoneError> {
        // A request whose deadline passed is a copy the hub sent again for an earlier
        // withdrawal (`docs/protocol.md` §4): never the one waited for.
        let now = self.clock.now();
        let claims = self
            .next_push("confirmation request", timeout, |c| {
                matches!(&c.msg, PhonePush::ConfirmRequest(r)
                    if tx_id.is_none_or(|t| t == r.tx_id) && r.confirm_by > now)
            })
            .await?;
        match claims.msg {
            PhonePush::ConfirmRequest(r) => Ok(r),
            other => Err(unexpected("ConfirmRequest", &other)),
        }
    }

    /// Approves `request` with the given evidence and position; returns the message `jti`.
    /// The signed fields are copied from the request ([`requests::confirmation`]).
    pub async fn confirm(
        &mut self,
        request: &ConfirmRequest,
        evidence: requests::Evidence,
        position: Option<Position>,
    ) -> Result<String, PhoneError> {
        let msg = requests::confirmation(request, evidence, position, &self.sealer())?;
        self.send(msg).await
    }

    /// Seals this device's secrets to the hub key it trusts.
    fn sealer(&self) -> SecretSealer {
        requests::sealer(
            &self.sealing_key(),
            &self.settings.device_id,
            self.signer.key(),
        )
    }

    /// Declines the withdrawal `tx_id` (`not_me` also freezes the account); returns the `jti`.
    pub async fn decline(&mut self, tx_id: TxId, not_me: bool) -> Result<String, PhoneError> {
        self.send(PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
            tx_id,
            not_me,
        }))
        .await
    }

    /// Waits for the receipt of `reference` (a transaction id or idempotency key); a
    /// `Rejected` answering message `re` ends the wait with an error.
    pub async fn await_receipt(
        &mut self,
        reference: &str,
        re: Option<&str>,
        timeout: Duration,
    ) -> Result<Receipt, PhoneError> {
        let claims = self
            .next_push("receipt", timeout, |c| match &c.msg {
                PhonePush::Receipt(r) => {
                    r.reference == reference || (re.is_some() && c.re.as_deref() == re)
                }
                PhonePush::Rejected(_) => re.is_some() && c.re.as_deref() == re,
                _ => false,
            })
            .await?;
        match claims.msg {
            PhonePush::Receipt(r) => Ok(r),
            PhonePush::Rejected(r) => Err(PhoneError::Rejected {
                reason: r.reason,
                message: r.message,
            }),
            other => Err(unexpected("Receipt", &other)),
        }
    }

    /// Sends a money movement and waits for its receipt (matched by `re` or by the
    /// idempotency key as reference).
    async fn money(
        &mut self,
        msg: PhoneUp,
        key: &str,
        timeout: Duration,
    ) -> Result<Receipt, PhoneError> {
        let jti = self.send(msg).await?;
        self.await_receipt(key, Some(&jti), timeout).await
    }

    /// Sends `amount` to `to_account`.
    pub async fn transfer(
        &mut self,
        to_account: &str,
        amount: Amount,
        memo: Option<String>,
        timeout: Duration,
    ) -> Result<Receipt, PhoneError> {
        let key = requests::idempotency_key();
        let msg = PhoneUp::Transfer(Transfer {
            idempotency_key: key.clone(),
            to_account: to_account.to_owned(),
            amount,
            memo,
        });
        self.money(msg, &key, timeout).await
    }

    /// Pays `amount` to merchant `merchant_id`.
    pub async fn pay(
        &mut self,
        merchant_id: &str,
        amount: Amount,
        timeout: Duration,
    ) -> Result<Receipt, PhoneError> {
        let key = requests::idempotency_key();
        let msg = PhoneUp::Payment(Payment {
            idempotency_key: key.clone(),
            merchant_id: merchant_id.to_owned(),
            amount,
        });
        self.money(msg, &key, timeout).await
    }

    /// Pays `amount` out to the registered bank account `bank_account`.
    pub async fn bank_withdraw(
        &mut self,
        bank_account: &str,
        amount: Amount,
        timeout: Duration,
    ) -> Result<Receipt, PhoneError> {
        let key = requests::idempotency_key();
        let msg = PhoneUp::BankWithdrawal(BankWithdrawal {
            idempotency_key: key.clone(),
            bank_account: bank_account.to_owned(),
            amount,
        });
        self.money(msg, &key, timeout).await
    }

    /// Adds `amount` to the account from its linked funding account `from`.
    pub async fn top_up(
        &mut self,
        amount: Amount,
        from: &str,
        timeout: Duration,
    ) -> Result<Receipt, PhoneError> {
        let key = requests::idempotency_key();
        let msg = PhoneUp::TopUp(TopUp {
            idempotency_key: key.clone(),
            amount,
            from: from.to_owned(),
        });
        self.money(msg, &key, timeout).await
    }

    /// Balance and the latest `history` entries of `account`.
    pub async fn balance(
        &mut self,
        account: &str,
        history: u32,
        timeout: Duration,
    ) -> Result<Balance, PhoneError> {
        let msg = PhoneUp::BalanceQuery(BalanceQuery {
            account: account.to_owned(),
            history,
        });
        match self.request(msg, timeout).await? {
            PhonePush::Balance(b) => Ok(b),
            other => Err(unexpected("Balance", &other)),
        }
    }

    /// Changes the account's password; every other device is signed out.
    pub async fn change_password(
        &mut self,
        current: &str,
        new: &str,
        timeout: Duration,
    ) -> Result<SessionsEnded, PhoneError> {
        let sealer = self.sealer();
        let msg = PhoneUp::ChangePassword(ChangePassword {
            current_password: sealer.seal(SecretField::CurrentPassword, current)?,
            new_password: sealer.seal(SecretField::NewPassword, new)?,
        });
        match self.request(msg, timeout).await? {
            PhonePush::SessionsEnded(s) => Ok(s),
            other => Err(unexpected("SessionsEnded", &other)),
        }
    }

    /// Ends the sessions of every other device of the account.
    pub async fn sign_out_other_devices(
        &mut self,
        timeout: Duration,
    ) -> Result<SessionsEnded, PhoneError> {
        let msg = PhoneUp::SignOutOtherDevices(SignOutOtherDevices {});
        match self.request(msg, timeout).await? {
            PhonePush::SessionsEnded(s) => Ok(s),
            other => Err(unexpected("SessionsEnded", &other)),
        }
    }

    /// Waits for the next `NewDeviceAlert`: another device logged in to the account.
    pub async fn await_alert(&mut self, timeout: Duration) -> Result<NewDeviceAlert, PhoneError> {
        let claims = self
            .next_push("new-device alert", timeout, |c| {
                matches!(c.msg, PhonePush::NewDeviceAlert(_))
            })
            .await?;
        match claims.msg {
            PhonePush::NewDeviceAlert(a) => Ok(a),
            other => Err(unexpected("NewDeviceAlert", &other)),
        }
    }

    /// Answers a new-device alert ("this was me" approves the new device, `not_me` revokes
    /// it and freezes the account) and returns what the hub did.
    pub async fn answer_alert(
        &mut self,
        alert_id: &str,
        not_me: bool,
        timeout: Duration,
    ) -> Result<AlertAnswered, PhoneError> {
        let msg = PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
            alert_id: alert_id.to_owned(),
            not_me,
        });
        match self.request(msg, timeout).await? {
            PhonePush::AlertAnswered(a) => Ok(a),
            other => Err(unexpected("AlertAnswered", &other)),
        }
    }

    /// Disconnects from the broker and stops the client's tasks.
    pub async fn shutdown(self) {
        self.link.disconnect(Duration::from_secs(1)).await;
    }
}

fn unexpected(wanted: &str, got: &PhonePush) -> PhoneError {
    PhoneError::Unexpected(format!("expected {wanted}, got {}", push_kind(got)))
}

/// The message type's name, for logs (never the contents: they may hold secrets).
pub fn kind(msg: &PhoneUp) -> &'static str {
    match msg {
        PhoneUp::Login(_) => "Login",
        PhoneUp::RegisterWithdrawal(_) => "RegisterWithdrawal",
        PhoneUp::ConfirmWithdrawal(_) => "ConfirmWithdrawal",
        PhoneUp::DeclineWithdrawal(_) => "DeclineWithdrawal",
        PhoneUp::Transfer(_) => "Transfer",
        PhoneUp::Payment(_) => "Payment",
        PhoneUp::BankWithdrawal(_) => "BankWithdrawal",
        PhoneUp::TopUp(_) => "TopUp",
        PhoneUp::BalanceQuery(_) => "BalanceQuery",
        PhoneUp::AnswerNewDeviceAlert(_) => "AnswerNewDeviceAlert",
        PhoneUp::ChangePassword(_) => "ChangePassword",
        PhoneUp::SignOutOtherDevices(_) => "SignOutOtherDevices",
    }
}

/// The push type's name, for logs and messages.
pub fn push_kind(msg: &PhonePush) -> &'static str {
    match msg {
        PhonePush::LoginResult(_) => "LoginResult",
        PhonePush::CodeIssued(_) => "CodeIssued",
        PhonePush::ConfirmRequest(_) => "ConfirmRequest",
        PhonePush::Receipt(_) => "Receipt",
        PhonePush::NewDeviceAlert(_) => "NewDeviceAlert",
        PhonePush::AlertAnswered(_) => "AlertAnswered",
        PhonePush::SessionsEnded(_) => "SessionsEnded",
        PhonePush::Balance(_) => "Balance",
        PhonePush::Rejected(_) => "Rejected",
    }
}
