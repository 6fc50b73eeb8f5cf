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
//! Under a flood the stage keeps at most `backlog` messages waiting and drops the rest
//! (counted in [`crate::service::ServiceStats::secret_checks_dropped`]): a dropped login is
//! silence, which the phone meets with its retry, while the writer keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use qrcash_protocol::messages::{IdentityEvidence, PhoneUp};
use qrcash_protocol::topics::Topic;
use qrcash_protocol::{MAX_UPLINK_BYTES, PrivateKey, PublicKey, Sealed, SealedSecret, SecretField};
use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc};

use crate::config::HubConfig;
use crate::error::StoreError;
use crate::handler::Incoming;
use crate::identity::{self, CheckedSecret};
use crate::store::Store;
use crate::store::rows::{self, DeviceStatus};
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

/// The checks the handler will make for this message, read from `db` at `now` (empty for
/// anything that is not a phone message carrying a password or PIN, or that its throttle
/// refuses before any check).
pub fn wanted(
    db: &Connection,
    cfg: &HubConfig,
    hub: &PrivateKey,
    topic: &str,
    payload: &[u8],
    now: u64,
) -> Result<Vec<Wanted>, StoreError> {
    let Some(Topic::PhoneUp(sender)) = Topic::parse(topic) else {
        return Ok(Vec::new());
    };
    let Ok(sealed) = Sealed::parse(payload, MAX_UPLINK_BYTES) else {
        return Ok(Vec::new());
    };
    let Ok(claims) = sealed.peek::<PhoneUp>() else {
        return Ok(Vec::new());
    };
    let device = rows::device(db, &sender)?;
    let account_of_device = || -> Result<Option<rows::AccountRow>, StoreError> {
        match &device {
            Some(d) => rows::account(db, &d.account),
            None => Ok(None),
        }
    };
    // Opened as the handler will open it: for this sender, the key named in the envelope
    // (the handler uses the verified one; if they differ, nothing opens and nothing is
    // checked ahead) and the field. A secret that does not open needs no check.
    let kid = sealed.kid().as_str().to_owned();
    let one = |sealed: &SealedSecret, field: SecretField, phc: &str| {
        sealed
            .open(hub, field, &sender, &kid)
            .map(|secret| {
                vec![Wanted {
                    secret: secret.expose().to_owned(),
                    phc: phc.to_owned(),
                }]
            })
            .unwrap_or_default()
    };
    Ok(match &claims.msg {
        PhoneUp::Login(l) => {
            let kid = PublicKey::from_jwk(&l.device.public_key).map(|k| k.kid().clone());
            let own = device.as_ref().is_some_and(|d| {
                d.account == l.account
                    && d.status == DeviceStatus::Active
                    && kid.as_ref().is_ok_and(|k| d.kid == k.as_str())
            });
            for subject in throttle::subjects(&sender, &l.account, own) {
                if rows::login_failures(db, &subject)?.check(now).is_err() {
                    return Ok(Vec::new());
                }
            }
            let phc = match rows::account(db, &l.account)? {
                Some(a) => a.password_hash,
                None => identity::decoy_hash(cfg.auth.hash_cost()).to_owned(),
            };
            one(&l.password, SecretField::Password, &phc)
        }
        PhoneUp::ChangePassword(c) => match account_of_device()? {
            Some(a) => one(
                &c.current_password,
                SecretField::CurrentPassword,
                &a.password_hash,
            ),
            None => Vec::new(),
        },
        PhoneUp::ConfirmWithdrawal(c) => match (&c.identity, account_of_device()?) {
            (IdentityEvidence { pin: Some(pin), .. }, Some(a)) => {
                one(pin, SecretField::Pin, &a.pin_hash)
            }
            _ => Vec::new(),
        },
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
    key: Arc<PrivateKey>,
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    backlog: usize,
    dropped: Arc<AtomicUsize>,
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
    pub fn new(db: PathBuf, config: Arc<HubConfig>, key: Arc<PrivateKey>, workers: usize) -> Self {
        SecretStage {
            db,
            config,
            key,
            workers: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            backlog: workers.max(1) * 16,
            dropped: Arc::new(AtomicUsize::new(0)),
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
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.backlog {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, "secret checks backlog full: message dropped");
            return Route::Dropped;
        }
        let stage = self.clone();
        let writer = writer.clone();
        tokio::spawn(async move {
            let Ok(_permit) = stage.workers.clone().acquire_owned().await else {
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
            let msg = Incoming { checked, ..msg };
            let _ = writer.send(crate::service::WriterCmd::Message(msg)).await;
        });
        Route::Taken
    }

    fn check(&self, topic: &str, payload: &[u8], now: u64) -> Vec<CheckedSecret> {
        let wanted = Store::open_reader(&self.db)
            .map_err(|e| e.to_string())
            .and_then(|db| {
                wanted(&db, &self.config, &self.key, topic, payload, now).map_err(|e| e.to_string())
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
