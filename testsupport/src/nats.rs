//! A real clustered broker per test: NATS server nodes routed into one cluster, each with
//! JetStream (which NATS's MQTT needs for sessions and retained messages) and an MQTT
//! listener, all on free loopback ports in a private folder.
//!
//! NATS keeps MQTT sessions and retained messages in JetStream streams replicated on three
//! nodes, so a cluster of three keeps working with one node down (two of three still make a
//! quorum), and a client of the dead node reconnects to another.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qrcash_io::BrokerConfig;

use crate::broker::{find_program, free_port, wait_for_port};
use crate::mqtt::TestClient;

/// The `nats-server` executable: `$NATS_SERVER`, then the usual places, then `$PATH`.
pub fn nats_binary() -> PathBuf {
    find_program(
        "NATS_SERVER",
        &[
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ],
        "nats-server",
    )
}

/// One node.
struct Node {
    name: String,
    mqtt_port: u16,
    /// The monitoring endpoint (`/healthz`).
    http_port: u16,
    child: Option<Child>,
}

/// A running NATS cluster; every node is killed when it is dropped.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `n` nodes routed to each other and waits until a message published on the last
    /// node reaches a subscriber on the first (routes up, JetStream's MQTT streams made).
    ///
    /// # Panics
    /// If `nats-server` is missing or the cluster does not form within 60 s; the message says
    /// how to fix it.
    pub async fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir for the NATS cluster");
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let name = format!("n{i}");
            let mqtt_port = free_port();
            let http_port = free_port();
            let config = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{client}\n\
                 http: 127.0.0.1:{http_port}\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{\n  name: qrcash-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n\
                 mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n",
                client = free_port(),
                store = dir.path().join(format!("{name}-js")).display(),
                routes = routes.join(", "),
            );
            std::fs::write(dir.path().join(format!("{name}.conf")), config)
                .expect("NATS configuration");
            nodes.push(Node {
                name,
                mqtt_port,
                http_port,
                child: None,
            });
        }
        let mut cluster = NatsCluster { dir, nodes };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_formed(Duration::from_secs(60)).await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let bin = nats_binary();
        let node = &self.nodes[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", node.name)))
            .expect("NATS log file");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(self.dir.path().join(format!("{}.conf", node.name)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; install it with `apt-get install -y nats-server` (scripts/install-deps.sh does)",
                    bin.display()
                )
            });
        self.nodes[i].child = Some(child);
        let port = self.nodes[i].mqtt_port;
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "NATS node {i} does not listen for MQTT on {port}: {}",
            self.log(i)
        );
    }

    /// Publishes on the last node until a subscriber on the first hears it.
    async fn wait_formed(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let last = self.nodes.len() - 1;
        let mut tried = String::new();
        while Instant::now() < deadline {
            match self.round_trip(0, last).await {
                Ok(()) => return,
                Err(e) => tried = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "the NATS cluster did not form within {within:?} ({tried}): {}",
            self.log(0)
        );
    }

    /// A subscriber on node `from` hears a message published on node `to` (each client held
    /// to its node: no failover).
    async fn round_trip(&self, from: usize, to: usize) -> Result<(), String> {
        let mut sub =
            TestClient::connect(&BrokerConfig::plain(self.url(from)), "cluster-probe-sub").await?;
        let codes = sub.subscribe("probe/formed").await;
        if codes.contains(&rumqttc::SubscribeReasonCode::Failure) {
            return Err("the subscription was refused".into());
        }
        let mut publisher =
            TestClient::connect(&BrokerConfig::plain(self.url(to)), "cluster-probe-pub").await?;
        publisher.publish("probe/formed", b"up".to_vec()).await;
        match sub.next_publish(Duration::from_secs(2)).await {
            Some(_) => Ok(()),
            None => Err("the probe message did not cross the cluster".into()),
        }
    }

    /// `mqtt://127.0.0.1:PORT` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.nodes[i].mqtt_port)
    }

    /// Plain-TCP broker settings that start at node `first` and fail over to the others in
    /// ring order.
    pub fn config(&self, first: usize) -> BrokerConfig {
        let n = self.nodes.len();
        BrokerConfig {
            url: self.url(first),
            failover_urls: (1..n).map(|k| self.url((first + k) % n)).collect(),
            ..BrokerConfig::default()
        }
    }

    /// Kills node `i` (as a crash would) and waits until its MQTT port is closed.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = self.nodes[i].mqtt_port;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `i` again after [`NatsCluster::kill`] and waits until every node is
    /// healthy ([`NatsCluster::healthy`]: as an operator waits before the next maintenance)
    /// and node `i` serves MQTT in the cluster again (a message published on it reaches a
    /// subscriber on another node, and one published on another node reaches a subscriber
    /// on it).
    ///
    /// # Errors
    /// If that does not happen within 60 s; the message carries the node's log.
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].child.is_none() {
            self.spawn(i);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        // Health first, over HTTP: each MQTT probe makes and deletes JetStream session
        // records, load a catching-up cluster does not need.
        while !self.healthy() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "NATS node {i} is back but the cluster's JetStream did not catch up within \
                     60 s: {}",
                    self.log(i)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let other = (i + 1) % self.nodes.len();
        loop {
            let tried = match self.round_trip(other, i).await {
                Ok(()) => self.round_trip(i, other).await,
                e => e,
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "NATS node {i} did not carry messages within 60 s ({e}): {}",
                        self.log(i)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Whether every running node answers `/healthz` with `ok`: its JetStream (which holds
    /// the MQTT sessions, retained messages and QoS 1 deliveries) is current with the
    /// cluster's, so losing another node leaves a working majority.
    pub fn healthy(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .all(|n| healthz(n.http_port))
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never: [`NatsCluster::start`] makes at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node whose MQTT listener is at `url` (as [`NatsCluster::url`] gives it).
    pub fn node_at(&self, url: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.url(i) == url)
    }

    /// What node `i` logged so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }
}

/// `GET /healthz` on a node's monitoring port answers `200` with `{"status":"ok"}`.
fn healthz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
