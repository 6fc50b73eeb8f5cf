//! A bare MQTT test client: connect, subscribe, publish with QoS 1 and wait for what arrives.
//!
//! Used where a test must act as a device *without* the real device software (a client with
//! a stolen certificate, an observer on the hub's topics) and by the broker benchmarks. It
//! never reconnects: a test that sees an error wants to know.

use std::collections::VecDeque;
use std::time::Duration;

use qrcash_io::{BrokerConfig, mqtt_options};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the event loop saw.
#[derive(Debug)]
enum Seen {
    Connected,
    Publish(String, Vec<u8>),
    SubAck(Vec<SubscribeReasonCode>),
    PubAck,
    Error(String),
    /// A publish was moved into the client's queue.
    Queued,
}

/// A connected MQTT client.
pub struct TestClient {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    publishes: VecDeque<(String, Vec<u8>)>,
    task: JoinHandle<()>,
}

const WAIT: Duration = Duration::from_secs(10);

impl TestClient {
    /// Connects as `client_id`; `Err` with the reason if the broker refuses or TLS fails.
    pub async fn connect(cfg: &BrokerConfig, client_id: &str) -> Result<TestClient, String> {
        let opts = mqtt_options(cfg, client_id).map_err(|e| e.to_string())?;
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let seen = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::Connected,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Seen::Publish(p.topic.clone(), p.payload.to_vec())
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => Seen::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::PubAck(_))) => Seen::PubAck,
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Seen::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Seen::Connected)) => Ok(TestClient {
                client,
                rx,
                publishes: VecDeque::new(),
                task,
            }),
            Ok(Some(Seen::Error(e))) => Err(e),
            Ok(other) => Err(format!("unexpected first event {other:?}")),
            Err(_) => Err("no ConnAck within 10 s".into()),
        }
    }

    async fn next(&mut self, timeout: Duration) -> Option<Seen> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(Seen::Publish(t, p))) => {
                self.publishes.push_back((t, p));
                Some(Seen::Queued)
            }
            Ok(seen) => seen,
            Err(_) => None,
        }
    }

    /// Subscribes with QoS 1 and returns the broker's return codes.
    ///
    /// # Panics
    /// If the broker does not answer within 10 s or the connection fails.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        loop {
            match self.next(WAIT).await {
                Some(Seen::SubAck(codes)) => return codes,
                Some(Seen::Error(e)) => panic!("connection failed while subscribing: {e}"),
                Some(_) => {}
                None => panic!("no SubAck for {filter} within 10 s"),
            }
        }
    }

    /// Publishes with QoS 1 and waits for the broker's PubAck. (A broker that denies the
    /// publish by ACL still acknowledges it under MQTT 3.1.1 and drops it silently.)
    ///
    /// # Panics
    /// If no PubAck arrives within 10 s.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, false).await;
    }

    /// [`TestClient::publish`], retained.
    pub async fn publish_retained(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, true).await;
    }

    async fn publish_with(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .expect("publish request");
        loop {
            match self.next(WAIT).await {
                Some(Seen::PubAck) => return,
                Some(Seen::Error(e)) => panic!("connection failed while publishing: {e}"),
                Some(_) => {}
                None => panic!("no PubAck for {topic} within 10 s"),
            }
        }
    }

    /// The next message delivered to this client, or `None` after `timeout`.
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.publishes.pop_front() {
                return Some(p);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                None | Some(Seen::Error(_)) => return None,
                Some(_) => {}
            }
        }
    }

    /// The underlying client, for tests that need more.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
