//! Checks ahead: the passwords and PINs a phone message carries are checked (argon2, tens of
//! milliseconds each) on a bounded set of worker threads *before* the message reaches the
//! single writer, so that guessing costs the writer, and everyone else's requests, nothing.
//!
//! [`wanted`] is pure over a read-only view of the database: it peeks at the message (not
//! yet verified: the answer it leads to is a pure function of the secret and the stored
//! hash, so nothing here trusts the sender) and names the (secret, stored hash) pairs the
//! handler will check. [`SecretStage`] runs them on its workers and attaches the answers as
//! [`CheckedSecret`]s keyed by both, which the handler uses only for exactly the check it
//! would make itself; anything else (the hash changed meanwhile, no worker) it checks on
//! the writer. A login that its throttle already refuses needs no check at all.
//!
//! Under a flood the stage keeps at most `backlog` messages waiting, at most one per sender,
//! and drops the rest (counted in [`crate::service::ServiceStats::secret_checks_dropped`]): a
//! dropped login is silence, which the phone meets with its retry, while the writer keeps
//! serving. Only authentic messages are checked: a forged one costs a signature check.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use qrcash_protocol::messages::PhoneUp;
use qrcash_protocol::receive;
use qrcash_protocol::topics::Topic;
use qrcash_protocol::{MAX_UPLINK_BYTES, Sealed, SealedSecret, SecretField};

use crate::keyring::KeyRing;
use tokio::sync::{Semaphore, mpsc};

use crate::config::HubConfig;
use crate::error::StoreError;
use crate::handler::{Incoming, PhoneKeys};
use crate::identity::{self, CheckedSecret};
use crate::restriction;
use crate::store::rows::{self, DeviceStatus};
use crate::store::{Db, Store};
use crate::throttle;

/// A secret to check (opened: see `qrcash_protocol::sealed`) and the stored hash to check
/// it against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The password or PIN, as sent.
    pub secret: String,
    /// The stored argon2 hash (PHC string).
    pub phc: String,
}

/// The checks the handler will make for this message, read from `db` at `now`: empty for
/// anything that is not an authentic phone message carrying a password or PIN, or that the
/// handler refuses before any check. The signature is verified here as the handler will
/// (Ed25519 costs far less than argon2), so a forged message costs no check; and the
/// handler's refusals that come before a check are mirrored (a throttled login, a revoked or
/// foreign device, a restricted device changing the password, a locked PIN, a confirmation
/// of no withdrawal this device has at an ATM).
pub fn wanted(
    db: Db<'_>,
    cfg: &HubConfig,
    hub: &KeyRing,
    topic: &str,
    payload: &[u8],
    now: u64,
) -> Result<Vec<Wanted>, StoreError> {
    let Some(Topic::PhoneUp(sender)) = Topic::parse(topic) else {
        return Ok(Vec::new());
    };
    // The handler's own verification (`receive::open` with the hub's key directory): a
    // message it would not authenticate costs no check here either.
    let Ok(authentic) =
        receive::open::<PhoneUp, _>(&PhoneKeys(db), &sender, payload, MAX_UPLINK_BYTES)
    else {
        return Ok(Vec::new());
    };
    let kid = authentic.kid.as_str().to_owned();
    let device = authentic.entry;
    let claims = authentic.claims;
    let one = |sealed: &SealedSecret, field: SecretField, phc: &str| {
        hub.open_secret(sealed, field, &sender, &kid)
            .map(|secret| {
                vec![Wanted {
                    secret: secret.expose().to_owned(),
                    phc: phc.to_owned(),
                }]
            })
            .unwrap_or_default()
    };
    let locked = |subjects: &[String]| -> Result<bool, StoreError> {
        for subject in subjects {
            if rows::login_failures(db, subject)?.check(now).is_err() {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let active = device.as_ref().filter(|d| d.status == DeviceStatus::Active);
    Ok(match &claims.msg {
        PhoneUp::Login(l) => {
            if device
                .as_ref()
                .is_some_and(|d| d.status != DeviceStatus::Active || d.account != l.account)
            {
                return Ok(Vec::new());
            }
            let own = active.is_some_and(|d| d.kid == kid);
            if locked(&throttle::subjects(&sender, &l.account, own))? {
                return Ok(Vec::new());
            }
            let phc = match rows::account(db, &l.account)? {
                Some(a) => a.password_hash,
                None => identity::decoy_hash(cfg.auth.hash_cost()).to_owned(),
            };
            one(&l.password, SecretField::Password, &phc)
        }
        PhoneUp::ChangePassword(c) => {
            let Some(d) = active
                .filter(|d| restriction::device_restriction(d).is_none_or(|r| !r.is_active(now)))
            else {
                return Ok(Vec::new());
            };
            if locked(&[
                throttle::device_subject(&d.id),
                throttle::account_subject(&d.account),
            ])? {
                return Ok(Vec::new());
            }
            match rows::account(db, &d.account)? {
                Some(a) => one(
                    &c.current_password,
                    SecretField::CurrentPassword,
                    &a.password_hash,
                ),
                None => Vec::new(),
            }
        }
        PhoneUp::ConfirmWithdrawal(c) => {
            let (Some(d), Some(pin)) = (active, &c.identity.pin) else {
                return Ok(Vec::new());
            };
            let staged = rows::withdrawal(db, &c.tx_id)?.is_some_and(|w| {
                w.device_id == d.id && w.phase == crate::withdrawal::Phase::Presented
            });
            match rows::account(db, &d.account)? {
                Some(a) if staged && a.pin.locked(now).is_none() => {
                    one(pin, SecretField::Pin, &a.pin_hash)
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    })
}

/// Whether `msg` is a phone message of a kind that carries a password or PIN.
fn carries_secret(msg: &Incoming) -> bool {
    if !matches!(Topic::parse(&msg.topic), Some(Topic::PhoneUp(_))) {
        return false;
    }
    let Ok(sealed) = Sealed::parse(&msg.payload, MAX_UPLINK_BYTES) else {
        return false;
    };
    match sealed.peek::<PhoneUp>().map(|c| c.msg) {
        Ok(PhoneUp::Login(_) | PhoneUp::ChangePassword(_)) => true,
        Ok(PhoneUp::ConfirmWithdrawal(c)) => c.identity.pin.is_some(),
        _ => false,
    }
}

/// The worker threads and their bounded backlog.
#[derive(Debug, Clone)]
pub struct SecretStage {
    db: PathBuf,
    config: Arc<HubConfig>,
    key: Arc<KeyRing>,
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    backlog: usize,
    dropped: Arc<AtomicUsize>,
    /// Senders with a check waiting or running: one at a time each, so that one device
    /// cannot fill the backlog that everyone's logins share.
    busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Where a message goes after [`SecretStage::route`].
#[derive(Debug)]
pub enum Route {
    /// Straight to the writer: it carries no secret worth checking ahead.
    Writer(Incoming),
    /// Taken by the stage, which sends it to the writer once its secrets are checked.
    Taken,
    /// Dropped: the backlog is full.
    Dropped,
}

impl SecretStage {
    /// A stage with `workers` threads reading the database at `db` (a file: an in-memory
    /// hub checks on its writer), keeping at most `16 × workers` messages waiting.
    pub fn new(db: PathBuf, config: Arc<HubConfig>, key: Arc<KeyRing>, workers: usize) -> Self {
        SecretStage {
            db,
            config,
            key,
            workers: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            backlog: workers.max(1) * 16,
            dropped: Arc::new(AtomicUsize::new(0)),
            busy: Arc::default(),
        }
    }

    /// Messages dropped so far because the backlog was full.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends `msg` to the writer now, or checks its secrets first and sends it then.
    pub(crate) fn route(
        &self,
        msg: Incoming,
        writer: &mpsc::Sender<crate::service::WriterCmd>,
        now: u64,
    ) -> Route {
        // A cheap look on the event loop: only these messages carry secrets. The others go
        // straight on, so a phone's messages without secrets keep their order.
        if !carries_secret(&msg) {
            return Route::Writer(msg);
        }
        let sender = match Topic::parse(&msg.topic) {
            Some(Topic::PhoneUp(id)) => id,
            _ => return Route::Writer(msg),
        };
        let first_of_sender = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(sender.clone());
        if !first_of_sender {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, "a secret check of this sender is waiting: message dropped");
            return Route::Dropped;
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.backlog {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.release(&sender);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, "secret checks backlog full: message dropped");
            return Route::Dropped;
        }
        let stage = self.clone();
        let writer = writer.clone();
        tokio::spawn(async move {
            let Ok(_permit) = stage.workers.clone().acquire_owned().await else {
                stage.release(&sender);
                return;
            };
            let checked = {
                let stage = stage.clone();
                let (topic, payload) = (msg.topic.clone(), msg.payload.clone());
                tokio::task::spawn_blocking(move || stage.check(&topic, &payload, now))
                    .await
                    .unwrap_or_default()
            };
            stage.waiting.fetch_sub(1, Ordering::AcqRel);
            stage.release(&sender);
            let msg = Incoming { checked, ..msg };
            let _ = writer.send(crate::service::WriterCmd::Message(msg)).await;
        });
        Route::Taken
    }

    fn release(&self, sender: &str) {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(sender);
    }

    fn check(&self, topic: &str, payload: &[u8], now: u64) -> Vec<CheckedSecret> {
        let wanted = Store::open_reader(&self.db)
            .map_err(|e| e.to_string())
            .and_then(|db| {
                wanted(db.db(), &self.config, &self.key, topic, payload, now)
                    .map_err(|e| e.to_string())
            });
        match wanted {
            Ok(list) => list
                .iter()
                .map(|w| identity::check_ahead(&w.secret, &w.phc))
                .collect(),
            Err(e) => {
                // The writer will check on its own.
                tracing::warn!(error = %e, "secret check ahead failed");
                Vec::new()
            }
        }
    }
}
