//! One MQTT link, written once, for the hub, the agent and the phone.
//!
//! [`spawn`] starts two tasks around a `rumqttc` client and returns a [`LinkHandle`] to
//! publish with and a channel of typed [`LinkEvent`]s:
//!
//! ```text
//! broker ◀──▶ poll task ──LinkEvent (Up, Down, Message)──▶ the program
//!               │ ConnAck                 ▲
//!               ▼                         │ publish / try_publish / disconnect
//!           subscribe task ──▶ client ◀── LinkHandle (clones)
//! ```
//!
//! - The **poll task** only polls: it never calls the client, whose bounded request queue it
//!   is the one to drain (a call from there can deadlock). After an error it waits a
//!   [`Backoff`] delay, since `poll()` itself reconnects at once, and with a clustered broker
//!   (`failover_urls`) moves on to the next node, in order, back to the first after the last.
//! - The **subscribe task** renews every subscription after each ConnAck (the sessions are
//!   clean, so the broker forgets them) and then publishes the `on_connect` messages (the
//!   agent's retained "online" presence).
//! - The link is **up** once the broker accepted the subscriptions, and **down** from the
//!   first connection error; each change is one event, in order, and [`LinkHandle::is_up`]
//!   follows it. A subscription the broker refuses (its ACL, or a cluster node not ready)
//!   keeps the link down, and is asked for again after 1–2 s, doubling up to a minute
//!   (jittered): a program
//!   that cannot hear its topic must not act as if it could.
//! - Messages wait for the program: the poll task stops polling while the event channel is
//!   full, so a slow consumer slows the broker down rather than losing anything. Once the
//!   program drops its receiver, messages are discarded and the link still carries what is
//!   published (a hub finishing its answers at shutdown).
//! - [`LinkHandle::disconnect`] publishes the `on_disconnect` messages (the agent's retained
//!   "offline": a clean DISCONNECT discards the last will), sends DISCONNECT, lets what is
//!   queued reach the socket and ends both tasks; [`LinkHandle::finish`] makes a connection
//!   error end the link instead of reconnecting (shutdown with the broker gone); dropping the
//!   last handle aborts the tasks.
//!
//! Durability never relies on this link: `rumqttc`'s queue is memory only, and what must
//! survive a crash is in the programs' own stores (the agent's outbox, the hub's database).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, LastWill, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::broker::{BrokerConfig, LinkError, mqtt_options_at};

/// A message to publish at QoS 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Whether the broker keeps it as the topic's retained message.
    pub retain: bool,
}

/// How to run a link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Broker URL and TLS files.
    pub broker: BrokerConfig,
    /// MQTT client id (the device or hub instance id).
    pub client_id: String,
    /// Topic filters subscribed at QoS 1 after every connection.
    pub subscriptions: Vec<String>,
    /// Published after the subscriptions, on every connection.
    pub on_connect: Vec<Publication>,
    /// Published by [`LinkHandle::disconnect`] before DISCONNECT (the broker discards the
    /// last will on a clean disconnect).
    pub on_disconnect: Vec<Publication>,
    /// What the broker publishes for us when the connection dies without DISCONNECT.
    pub last_will: Option<Publication>,
    /// A clean session (the default; our stores hold what must survive) or a persistent one.
    pub clean_session: bool,
    /// Outgoing QoS-1 messages in flight at once (`None`: the client's default).
    pub inflight: Option<u16>,
    /// Requests (publishes, subscribes) the client queues before `publish` waits.
    pub queue: usize,
    /// Events the link holds for the program before it stops polling.
    pub events: usize,
    /// Delay between reconnection attempts.
    pub backoff: Backoff,
    /// How often at most the TLS files are looked at, on the link's events (a quiet link has
    /// one every keep-alive, its ping): when one changed (a renewed certificate), the link
    /// reconnects with them; every reconnection reads them anew anyway.
    pub tls_check: Duration,
}

impl LinkOptions {
    /// A clean-session link for `client_id` with no subscriptions yet.
    pub fn new(broker: BrokerConfig, client_id: impl Into<String>) -> Self {
        LinkOptions {
            broker,
            client_id: client_id.into(),
            subscriptions: Vec::new(),
            on_connect: Vec::new(),
            on_disconnect: Vec::new(),
            last_will: None,
            clean_session: true,
            inflight: None,
            queue: 256,
            events: 256,
            backoff: Backoff::default(),
            tls_check: Duration::from_secs(30),
        }
    }

    /// Adds topic filters to subscribe to.
    pub fn subscribe(mut self, filters: impl IntoIterator<Item = String>) -> Self {
        self.subscriptions.extend(filters);
        self
    }
}

/// What the link tells the program, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected and subscribed.
    Up,
    /// The connection was lost (reconnection is under way).
    Down,
    /// A message arrived on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload, not yet looked at.
        payload: Vec<u8>,
    },
}

/// A publish could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The client's queue is full (only [`LinkHandle::try_publish`] says so).
    #[error("the MQTT client's queue is full")]
    Full,
    /// The link has stopped.
    #[error("the MQTT link has stopped")]
    Closed,
}

/// Aborts the link's tasks when the last handle goes.
#[derive(Debug)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Publishes on a running link; clones share it.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    client: AsyncClient,
    up: watch::Receiver<bool>,
    state: Arc<State>,
    on_disconnect: Arc<[Publication]>,
    tasks: Arc<Tasks>,
}

impl LinkHandle {
    /// Queues `payload` for `topic` at QoS 1, waiting while the client's queue is full.
    /// Queued is not delivered: the stores decide what to send again.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| PublishError::Closed)
    }

    /// Queues `payload` for `topic` at QoS 1 unless the client's queue is full.
    pub fn try_publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| match e {
                ClientError::TryRequest(_) if !self.tasks.0[0].is_finished() => PublishError::Full,
                _ => PublishError::Closed,
            })
    }

    /// How many connections were lost or closed since the link started, counted the moment
    /// the poll task learns of it. A publish queued before the count grew may have been lost
    /// with its connection (the session is clean); one queued on a connection that is still
    /// the current one has not been.
    pub fn losses(&self) -> u64 {
        self.state.losses.load(Ordering::SeqCst)
    }

    /// Whether the link is connected and subscribed now.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// A watch that follows [`LinkHandle::is_up`].
    pub fn up_watch(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    /// Waits until the link is up, at most `timeout`; whether it is.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut up = self.up.clone();
        tokio::time::timeout(timeout, up.wait_for(|u| *u))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// From now on a connection error ends the link instead of reconnecting: what is queued
    /// is delivered if the broker is there, and publishing fails with
    /// [`PublishError::Closed`] if it is not. For shutdowns.
    pub fn finish(&self) {
        self.state.finishing.store(true, Ordering::SeqCst);
    }

    /// Publishes the `on_disconnect` messages, sends DISCONNECT after everything queued, and
    /// waits up to `drain` for it to reach the socket; then ends the link's tasks.
    pub async fn disconnect(&self, drain: Duration) {
        self.finish();
        let deadline = tokio::time::Instant::now() + drain;
        let queued = async {
            if publish_all(&self.client, &self.on_disconnect).await.is_ok() {
                let _ = self.client.disconnect().await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, queued).await;
        let mut up = self.up.clone();
        let _ = tokio::time::timeout_at(deadline, async {
            while !self.tasks.0.iter().all(JoinHandle::is_finished) {
                if up.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        for t in &self.tasks.0 {
            t.abort();
        }
    }
}

/// Starts a link: connection, subscriptions and reconnection run until
/// [`LinkHandle::disconnect`] or until the last handle is dropped.
///
/// Must be called inside a tokio runtime.
pub fn spawn(options: LinkOptions) -> Result<(LinkHandle, mpsc::Receiver<LinkEvent>), LinkError> {
    if let Some(bad) = options
        .subscriptions
        .iter()
        .find(|f| !rumqttc::valid_filter(f))
    {
        return Err(LinkError::BadFilter(bad.clone()));
    }
    let brokers = Brokers::new(&options)?;
    let mqtt = brokers.options(0)?;
    let (client, mut eventloop) = AsyncClient::new(mqtt, options.queue.max(1));
    // Our packets are small and written one by one: without TCP_NODELAY each can wait for
    // the peer's delayed ACK (Nagle), about 40 ms a hop on Linux.
    eventloop.network_options.set_tcp_nodelay(true);
    let (events_tx, events) = mpsc::channel(options.events.max(1));
    let (up_tx, up) = watch::channel(false);
    let (connack_tx, connack_rx) = mpsc::channel(4);
    let subscribes = !options.subscriptions.is_empty();
    let state = Arc::new(State::default());
    let tls = TlsFiles::new(&options.broker, options.tls_check);
    let tasks = vec![
        tokio::spawn(poll(
            eventloop,
            subscribes,
            state.clone(),
            events_tx,
            up_tx,
            connack_tx,
            (options.backoff.clone(), tls, brokers),
        )),
        tokio::spawn(renew(
            client.clone(),
            options.subscriptions,
            options.on_connect,
            connack_rx,
        )),
    ];
    let handle = LinkHandle {
        client,
        up,
        state,
        on_disconnect: options.on_disconnect.into(),
        tasks: Arc::new(Tasks(tasks)),
    };
    Ok((handle, events))
}

/// The brokers a link may use, in order (`url`, then `failover_urls`), and the one in use.
/// After a connection error the link moves on to the next, so a dead node of a clustered
/// broker costs one backoff delay, not an outage.
struct Brokers {
    broker: BrokerConfig,
    client_id: String,
    clean_session: bool,
    inflight: Option<u16>,
    last_will: Option<Publication>,
    urls: Vec<String>,
    at: usize,
}

impl Brokers {
    /// Checks every address and TLS setting once, so that a typo fails at start.
    fn new(options: &LinkOptions) -> Result<Brokers, LinkError> {
        let brokers = Brokers {
            broker: options.broker.clone(),
            client_id: options.client_id.clone(),
            clean_session: options.clean_session,
            inflight: options.inflight,
            last_will: options.last_will.clone(),
            urls: options.broker.urls().map(str::to_owned).collect(),
            at: 0,
        };
        for i in 0..brokers.urls.len() {
            brokers.options(i)?;
        }
        Ok(brokers)
    }

    /// The client options for the broker at `index`.
    fn options(&self, index: usize) -> Result<rumqttc::MqttOptions, LinkError> {
        let mut mqtt = mqtt_options_at(&self.broker, &self.urls[index], &self.client_id)?;
        mqtt.set_clean_session(self.clean_session);
        if let Some(n) = self.inflight {
            mqtt.set_inflight(n);
        }
        if let Some(will) = &self.last_will {
            mqtt.set_last_will(LastWill::new(
                will.topic.clone(),
                will.payload.clone(),
                QoS::AtLeastOnce,
                will.retain,
            ));
        }
        Ok(mqtt)
    }

    /// The transport of the broker in use, built from the TLS files as they are now; `None`
    /// for plain TCP, and (logged) when the files do not load, so the link keeps the one it
    /// has.
    fn transport(&self) -> Option<rumqttc::Transport> {
        self.broker.ca_file.as_ref()?;
        match mqtt_options_at(&self.broker, &self.urls[self.at], &self.client_id) {
            Ok(o) => Some(o.transport()),
            Err(e) => {
                tracing::error!(error = %e, "the TLS files do not load: keeping the ones in use");
                None
            }
        }
    }

    /// After a connection error: the options of the next broker, when there is another.
    fn next(&mut self) -> Option<rumqttc::MqttOptions> {
        if self.urls.len() < 2 {
            return None;
        }
        self.at = (self.at + 1) % self.urls.len();
        match self.options(self.at) {
            Ok(options) => {
                tracing::info!(broker = %self.urls[self.at], "moving on to the next broker");
                Some(options)
            }
            Err(e) => {
                tracing::error!(broker = %self.urls[self.at], error = %e, "cannot use the next broker");
                None
            }
        }
    }
}

/// The TLS files of a link, watched for changes (a renewed certificate takes effect without
/// a restart; [`Brokers::transport`] reads them).
struct TlsFiles {
    broker: BrokerConfig,
    every: Duration,
    stamp: Vec<Option<std::time::SystemTime>>,
    checked: tokio::time::Instant,
}

impl TlsFiles {
    fn new(broker: &BrokerConfig, every: Duration) -> Self {
        let mut files = TlsFiles {
            broker: broker.clone(),
            every,
            stamp: Vec::new(),
            checked: tokio::time::Instant::now(),
        };
        files.stamp = files.stamps();
        files
    }

    fn stamps(&self) -> Vec<Option<std::time::SystemTime>> {
        [
            &self.broker.ca_file,
            &self.broker.cert_file,
            &self.broker.key_file,
        ]
        .into_iter()
        .map(|p| {
            p.as_ref()
                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
        .collect()
    }

    /// Whether a file changed since last looked at (at most every `every`).
    fn changed(&mut self) -> bool {
        if self.broker.ca_file.is_none() || self.checked.elapsed() < self.every {
            return false;
        }
        self.checked = tokio::time::Instant::now();
        let now = self.stamps();
        let changed = now != self.stamp;
        self.stamp = now;
        changed
    }
}

/// What the handles and the poll task share.
#[derive(Debug, Default)]
struct State {
    /// Set by [`LinkHandle::finish`]: a connection error ends the link.
    finishing: AtomicBool,
    /// Connections lost or closed ([`LinkHandle::losses`]).
    losses: AtomicU64,
}

/// The poll task: connection state and messages to the program, backoff after errors.
async fn poll(
    mut eventloop: EventLoop,
    subscribes: bool,
    state: Arc<State>,
    events: mpsc::Sender<LinkEvent>,
    up: watch::Sender<bool>,
    connacks: mpsc::Sender<()>,
    (mut backoff, mut tls, mut brokers): (Backoff, TlsFiles, Brokers),
) {
    // Sends an event unless the program has stopped listening.
    async fn tell(events: &mpsc::Sender<LinkEvent>, event: LinkEvent) {
        let _ = events.send(event).await;
    }
    // Subscriptions refused: asked again after 1–2 s, doubling up to a minute (jittered),
    // by one timer at a time, which a new connection or an error cancels.
    let mut refusals = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    let mut retry: Option<JoinHandle<()>> = None;
    loop {
        let polled = eventloop.poll().await;
        // Every event (pings at least every keep-alive) is a chance to look at the files.
        if polled.is_ok()
            && tls.changed()
            && let Some(transport) = brokers.transport()
        {
            tracing::info!("the TLS files changed: reconnecting with them");
            eventloop.mqtt_options.set_transport(transport);
            // Drops the connection. What was in flight may be lost with the clean session:
            // what matters is in the programs' own stores, which send it again.
            eventloop.clean();
            state.losses.fetch_add(1, Ordering::SeqCst);
            if up.send_replace(false) {
                tell(&events, LinkEvent::Down).await;
            }
            continue;
        }
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::debug!(code = ?ack.code, "connected to the broker");
                // A retry of a refused subscription from the last connection would come on
                // top of this connection's own subscriptions.
                if let Some(retry) = retry.take() {
                    retry.abort();
                }
                let _ = connacks.try_send(());
                if !subscribes {
                    // Up: the backoff starts small again. (With subscriptions, only once the
                    // broker accepted them: a node that takes the connection and then drops
                    // the client must not be hammered.)
                    backoff.reset();
                    if !up.send_replace(true) {
                        tell(&events, LinkEvent::Up).await;
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    // Its ACL, or a clustered broker that cannot serve a topic yet (NATS
                    // electing a stream's leader after a node died). Stay down, say why,
                    // and ask again later: a refusal by ACL only repeats in the log, a
                    // passing one heals without a restart.
                    let delay = refusals.next_delay();
                    tracing::error!(codes = ?ack.return_codes, retry_in_ms = delay.as_millis() as u64, "the broker refused a subscription: the link stays down until it accepts");
                    let again = connacks.clone();
                    if let Some(old) = retry.replace(tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = again.send(()).await;
                    })) {
                        old.abort();
                    }
                    continue;
                }
                refusals.reset();
                backoff.reset();
                if !*up.borrow() {
                    up.send_replace(true);
                    tell(&events, LinkEvent::Up).await;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let message = LinkEvent::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                };
                tell(&events, message).await;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Let the DISCONNECT reach the socket, then stop.
                let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                state.losses.fetch_add(1, Ordering::SeqCst);
                if up.send_replace(false) {
                    let _ = events.try_send(LinkEvent::Down);
                }
                return;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => {
                // Every client is gone: nobody can publish or disconnect any more.
                state.losses.fetch_add(1, Ordering::SeqCst);
                up.send_replace(false);
                return;
            }
            Err(e) => {
                state.losses.fetch_add(1, Ordering::SeqCst);
                if up.send_replace(false) {
                    tell(&events, LinkEvent::Down).await;
                }
                if let Some(retry) = retry.take() {
                    retry.abort();
                }
                refusals.reset();
                if state.finishing.load(Ordering::SeqCst) {
                    tracing::debug!(error = %e, "broker connection ended while finishing");
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost");
                tokio::time::sleep(delay).await;
                // A clustered broker: the next node, its options made from the TLS files as
                // they are now; else the same broker, with the files read again (a
                // certificate renewed meanwhile).
                if let Some(next) = brokers.next() {
                    eventloop.mqtt_options = next;
                } else if let Some(transport) = brokers.transport() {
                    eventloop.mqtt_options.set_transport(transport);
                }
            }
        }
    }
}

/// The subscribe task: subscriptions and `on_connect` messages after every ConnAck.
async fn renew(
    client: AsyncClient,
    subscriptions: Vec<String>,
    on_connect: Vec<Publication>,
    mut connacks: mpsc::Receiver<()>,
) {
    while connacks.recv().await.is_some() {
        if !subscriptions.is_empty() {
            let filters = subscriptions
                .iter()
                .map(|s| rumqttc::SubscribeFilter::new(s.clone(), QoS::AtLeastOnce));
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::warn!(error = %e, "cannot subscribe");
                return;
            }
        }
        if let Err(e) = publish_all(&client, &on_connect).await {
            tracing::warn!(error = %e, "cannot publish on connect");
        }
    }
}

/// Queues `publications` in order, at QoS 1.
async fn publish_all(
    client: &AsyncClient,
    publications: &[Publication],
) -> Result<(), ClientError> {
    for p in publications {
        client
            .publish(
                p.topic.as_str(),
                QoS::AtLeastOnce,
                p.retain,
                p.payload.clone(),
            )
            .await?;
    }
    Ok(())
}
