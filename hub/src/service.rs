//! The MQTT shell around the pure [`Hub`]: connection, subscriptions, the single writer, the
//! sweeper and graceful shutdown.
//!
//! Tasks, connected by typed channels:
//!
//! ```text
//! broker ─▶ link ──LinkEvent──▶ intake task ──Incoming──▶ writer thread (owns Hub + SQLite)
//!            ▲                                 ▲ Sweep (sweeper task)          │
//!            └──────────── publisher task ◀───────────────Outgoing─────────────┘
//! ```
//!
//! - The link ([`qrcash_io::link`]) connects, subscribes again after every reconnection
//!   (clean sessions lose subscriptions) and backs off between attempts; the hub is ready
//!   while it is up.
//! - Phone messages go through the secret checks first ([`crate::secrets`]): passwords and
//!   PINs are checked (argon2) on their own worker threads, so guessing never occupies the
//!   writer.
//! - The writer thread takes every message waiting (up to `group_commit_max`) into one
//!   transaction (group commit), each message atomic in its own savepoint, and hands the
//!   answers out only after the commit. The answers are kept in the transactional outbox in
//!   that same transaction; the publisher confirms each once it went out and the link stayed
//!   up for [`CONFIRM_AFTER`], and the writer then forgets it. What stays unconfirmed (this
//!   process died, or the link dropped) the sweeper of any instance publishes again.
//! - Shutdown: stop taking messages, let the writer finish what it has, publish its answers,
//!   disconnect.

use std::sync::Arc;
use std::time::Duration;

use qrcash_io::KeyFile;
use qrcash_io::link::{self, LinkEvent, LinkHandle, LinkOptions, Publication};
use qrcash_io::{BrokerConfig, LinkError};
use qrcash_protocol::{Clock, PrivateKey, Signer, SystemClock, topics};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::HubConfig;
use crate::handler::{Hub, Incoming, Outgoing};
use crate::rng::OsEntropy;
use crate::secrets::{Route, SecretStage};
use crate::warnings::WarningCatalog;

/// The service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Broker settings unusable.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Database unusable.
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
    /// Hub key unusable.
    #[error(transparent)]
    Key(#[from] qrcash_protocol::KeyError),
    /// The hub's keys do not form a usable set.
    #[error(transparent)]
    Keys(#[from] crate::keyring::KeyRingError),
    /// Warnings file unusable.
    #[error(transparent)]
    Warnings(#[from] crate::warnings::WarningsError),
    /// A thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
    /// Opening the database or loading the keys panicked.
    #[error("setting up the hub failed: {0}")]
    Setup(String),
}

/// Commands for the writer thread.
pub(crate) enum WriterCmd {
    Message(Incoming),
    Sweep,
}

/// Outbox rows whose answers reached the broker, from the publisher to the writer, which
/// takes them whenever it wakes (at the latest for the next sweep, before it sweeps). Not a
/// command: confirmations are never dropped for a full queue, and the publisher holds no
/// sender that would keep the writer waiting at shutdown.
type Confirmed = Arc<std::sync::Mutex<Vec<i64>>>;

/// How long the link must stay up after a publish before its outbox row is forgotten: the
/// client queues a publish at once, and a connection that drops within this time may have
/// lost it (it is then published again from the outbox).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// How the service connects.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The broker.
    pub broker: BrokerConfig,
    /// MQTT client id.
    pub client_id: String,
    /// Subscribe through the shared group.
    pub shared_subscription: bool,
    /// Most messages per transaction.
    pub group_commit_max: usize,
    /// How often to sweep.
    pub sweep_interval: Duration,
}

impl ServiceOptions {
    /// The options a configuration describes.
    pub fn from_config(c: &HubConfig) -> Self {
        ServiceOptions {
            broker: c.broker.link_config(),
            client_id: c.broker.client_id.clone(),
            shared_subscription: c.broker.shared_subscription,
            group_commit_max: c.storage.group_commit_max,
            sweep_interval: Duration::from_secs(c.storage.sweep_interval_s.max(1)),
        }
    }
}

/// Counters a running service exposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Messages handled.
    pub handled: u64,
    /// Transactions committed for them.
    pub batches: u64,
    /// Answers handed to the client.
    pub published: u64,
    /// Messages dropped because the secret checks' backlog was full (a login flood).
    pub secret_checks_dropped: u64,
}

/// A running hub service.
#[derive(Debug)]
pub struct HubHandle {
    stop: watch::Sender<bool>,
    stats: watch::Receiver<ServiceStats>,
    tasks: Vec<JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<Hub>>,
    secrets: Option<SecretStage>,
    link: LinkHandle,
}

impl HubHandle {
    /// Waits until the hub is connected and subscribed (or `timeout` passes).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.link.wait_up(timeout).await
    }

    /// Whether the hub is connected and subscribed now.
    pub fn is_ready(&self) -> bool {
        self.link.is_up()
    }

    /// The counters so far.
    pub fn stats(&self) -> ServiceStats {
        let mut s = *self.stats.borrow();
        s.secret_checks_dropped = self.secrets.as_ref().map_or(0, |st| st.dropped() as u64);
        s
    }

    /// Stops: no new messages, the writer finishes its queue, answers are published, the
    /// connection closes. Returns the hub (its database stays open until dropped).
    pub async fn shutdown(mut self) -> Option<Hub> {
        let _ = self.stop.send(true);
        // Answers still go out if the broker is there; if it is gone, publishing fails at
        // once instead of waiting for a reconnection.
        self.link.finish();
        for mut t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(10), &mut t)
                .await
                .is_err()
            {
                tracing::warn!("a hub task did not stop in time");
                t.abort();
            }
        }
        let writer = self.writer.take()?;
        tokio::task::spawn_blocking(move || writer.join().ok())
            .await
            .ok()
            .flatten()
    }
}

/// The hub as an MQTT service.
#[derive(Debug)]
pub struct HubService;

impl HubService {
    /// Opens the database and key named by `config` and starts with the system clock.
    pub async fn from_config(config: HubConfig) -> Result<HubHandle, ServiceError> {
        let options = ServiceOptions::from_config(&config);
        // Off the runtime's threads: the PostgreSQL client blocks on a runtime of its own.
        let hub = tokio::task::spawn_blocking(move || Self::hub(config))
            .await
            .map_err(|e| ServiceError::Setup(e.to_string()))??;
        Self::start(hub, options).await
    }

    /// The hub of `config`: its database opened (and migrated), its keys loaded.
    fn hub(config: HubConfig) -> Result<Hub, ServiceError> {
        let store = config.open_store()?;
        let key = PrivateKey::load(&config.key_file)?;
        let previous = config
            .previous_key_files
            .iter()
            .map(|path| PrivateKey::load(path))
            .collect::<Result<Vec<_>, _>>()?;
        let warnings =
            WarningCatalog::load(config.warnings.file.as_deref(), &config.warnings.languages)?;
        Ok(Hub::new(
            store,
            Signer::new(config.hub_id.clone(), key),
            config,
            warnings,
            Arc::new(SystemClock) as Arc<dyn Clock>,
            Box::new(OsEntropy),
        )
        .with_previous_keys(previous)?)
    }

    /// Starts the service around `hub` (with its outbox on: [`Hub::with_outbox`]).
    pub async fn start(hub: Hub, options: ServiceOptions) -> Result<HubHandle, ServiceError> {
        let hub = hub.with_outbox();
        let mut link_options = LinkOptions::new(options.broker.clone(), options.client_id.clone())
            .subscribe(topics::hub_subscriptions(options.shared_subscription));
        // The key set, retained and renewed on every connection: devices that trust any key
        // the hub holds learn the one it signs with (`qrcash_protocol::keyset`).
        link_options.on_connect = vec![Publication {
            topic: topics::HUB_KEYS.to_owned(),
            payload: hub
                .keys()
                .key_set(hub.signer().id(), hub.clock().now())
                .to_bytes(),
            retain: true,
        }];
        link_options.inflight = Some(100);
        link_options.queue = 1024;
        link_options.events = 1024;
        let (link, link_events) = link::spawn(link_options)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (stats_tx, stats_rx) = watch::channel(ServiceStats::default());
        let (writer_tx, writer_rx) = mpsc::channel::<WriterCmd>(4096);
        let (out_tx, out_rx) = mpsc::channel::<Outgoing>(4096);

        // Passwords and PINs are checked beside the writer when the database is a file.
        let secrets = match (hub.store().path(), hub.config().auth.secret_workers) {
            (Some(path), n) if n > 0 => Some(SecretStage::new(
                path.to_owned(),
                Arc::new(hub.config().clone()),
                Arc::new(hub.keys().clone()),
                n,
            )),
            _ => None,
        };
        let clock = hub.clock().clone();
        let group = options.group_commit_max.max(1);
        let stats = stats_tx.clone();
        let confirmed = Confirmed::default();
        let writer = std::thread::Builder::new()
            .name("hub-writer".into())
            .spawn({
                let confirmed = confirmed.clone();
                move || writer_loop(hub, writer_rx, out_tx, group, stats, confirmed)
            })
            .map_err(ServiceError::Thread)?;

        let tasks = vec![
            tokio::spawn(intake(
                link_events,
                Intake {
                    writer: writer_tx.clone(),
                    secrets: secrets.clone(),
                    clock,
                },
                stop_rx.clone(),
            )),
            tokio::spawn(publisher(link.clone(), out_rx, stats_tx, confirmed)),
            tokio::spawn(sweeper(writer_tx, options.sweep_interval, stop_rx)),
        ];
        Ok(HubHandle {
            stop: stop_tx,
            link: link.clone(),
            stats: stats_rx,
            tasks,
            writer: Some(writer),
            secrets,
        })
    }
}

/// Where the event loop hands incoming messages: the writer, through the secret checks
/// when there are any.
struct Intake {
    writer: mpsc::Sender<WriterCmd>,
    secrets: Option<SecretStage>,
    clock: Arc<dyn Clock>,
}

/// Hands every message to the writer (through the secret checks when there are any) until
/// the service stops; what arrives after that is left to the link, which drops it.
async fn intake(
    mut events: mpsc::Receiver<LinkEvent>,
    intake: Intake,
    mut stop: watch::Receiver<bool>,
) {
    let Intake {
        writer,
        secrets,
        clock,
    } = intake;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => return,
        };
        match event {
            None => return,
            Some(LinkEvent::Up) => tracing::info!("connected to the broker and subscribed"),
            Some(LinkEvent::Down) => tracing::warn!("lost the broker connection"),
            Some(LinkEvent::Message { topic, payload }) => {
                let msg = Incoming::new(topic, payload);
                let msg = match &secrets {
                    Some(stage) => match stage.route(msg, &writer, clock.now()) {
                        Route::Writer(m) => m,
                        Route::Taken | Route::Dropped => continue,
                    },
                    None => msg,
                };
                if writer.send(WriterCmd::Message(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Publishes the writer's answers and confirms their outbox rows once the link stayed up
/// for [`CONFIRM_AFTER`]; when the writer is done (shutdown), closes the link. Rows of
/// answers published while the link was down, or before it dropped, stay for the sweeper.
async fn publisher(
    link: LinkHandle,
    mut answers: mpsc::Receiver<Outgoing>,
    stats: watch::Sender<ServiceStats>,
    confirmed: Confirmed,
) {
    // (row, published at, the link's losses then), oldest first.
    let mut sent: std::collections::VecDeque<(i64, tokio::time::Instant, u64)> =
        std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(CONFIRM_AFTER / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = answers.recv() => {
                let Some(out) = out else { break };
                let up = link.is_up();
                let losses = link.losses();
                match link.publish(&out.topic, out.payload).await {
                    Ok(()) => {
                        stats.send_modify(|s| s.published += 1);
                        if let (Some(row), true) = (out.outbox, up) {
                            sent.push_back((row, tokio::time::Instant::now(), losses));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, topic = %out.topic, "publish failed"),
                }
            }
            _ = tick.tick() => {
                let losses = link.losses();
                let mut done = Vec::new();
                while let Some(&(row, at, seen)) = sent.front() {
                    if seen != losses {
                        // The link dropped since: maybe lost; the sweeper publishes it again.
                        sent.pop_front();
                    } else if at.elapsed() >= CONFIRM_AFTER {
                        done.push(row);
                        sent.pop_front();
                    } else {
                        break;
                    }
                }
                if !done.is_empty() {
                    lock(&confirmed).extend(done);
                }
            }
        }
    }
    link.disconnect(Duration::from_secs(10)).await;
}

/// Asks the writer to sweep at every interval.
async fn sweeper(
    writer: mpsc::Sender<WriterCmd>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if writer.send(WriterCmd::Sweep).await.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The single writer: group commit over whatever is waiting.
fn writer_loop(
    mut hub: Hub,
    mut rx: mpsc::Receiver<WriterCmd>,
    out: mpsc::Sender<Outgoing>,
    group: usize,
    stats: watch::Sender<ServiceStats>,
    confirmed: Confirmed,
) -> Hub {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        let mut sweep = false;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                WriterCmd::Message(m) => batch.push(m),
                WriterCmd::Sweep => sweep = true,
            }
            if batch.len() < group {
                next = rx.try_recv().ok();
            }
        }
        let mut answers = Vec::new();
        if !batch.is_empty() {
            for h in hub.handle_batch(&batch) {
                if let Err(e) = &h.result {
                    tracing::debug!(error = %e, "message refused");
                }
                answers.extend(h.outgoing);
            }
            tracing::debug!(messages = batch.len(), "batch handled");
            stats.send_modify(|s| {
                s.handled += batch.len() as u64;
                s.batches += 1;
            });
        }
        let published = std::mem::take(&mut *lock(&confirmed));
        if !published.is_empty()
            && let Err(e) = hub.confirm_published(&published)
        {
            // They stay in the outbox and go out once more: receivers drop the copy.
            tracing::warn!(error = %e, rows = published.len(), "outbox confirmations not recorded");
        }
        if sweep {
            match hub.sweep() {
                Ok((o, report)) => {
                    if !report.is_empty() {
                        tracing::info!(?report, "sweep");
                    }
                    answers.extend(o);
                }
                Err(e) => tracing::error!(error = %e, "sweep failed"),
            }
        }
        for a in answers {
            if out.blocking_send(a).is_err() {
                return hub;
            }
        }
    }
    hub
}

/// The confirmations, even after a panic elsewhere held the lock (a list of row ids cannot be
/// left half-changed).
fn lock(confirmed: &Confirmed) -> std::sync::MutexGuard<'_, Vec<i64>> {
    confirmed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
