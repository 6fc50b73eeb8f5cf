//! Shared by the hub suites (`hub_*.rs`): a hub service started over a real broker with a
//! real SQLite file, and device peers (phone or ATM) that sign their messages and open the
//! hub's answers. Setup goes through the hub library (`testkit::Rig`, `admin`), not a shell.

#![allow(dead_code)]

use std::time::Duration;

use qrcash_hub::handler::Hub;
use qrcash_hub::service::{HubHandle, HubService, ServiceOptions};
use qrcash_hub::store::Store;
use qrcash_hub::testkit::{Rig, TestDevice, test_config};
use qrcash_io::BrokerConfig;
use qrcash_protocol::messages::{AtmDown, AtmUp, PhonePush, PhoneUp};
use qrcash_protocol::{Claims, Clock as _, ManualClock, PublicKey, topics};
use qrcash_tests::mqtt::TestClient;

/// How long a test waits for an answer it expects.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running hub with the clock and key its peers need.
pub struct Net {
    pub handle: HubHandle,
    pub clock: ManualClock,
    pub hub_key: PublicKey,
    pub hub_id: String,
    pub dir: tempfile::TempDir,
}

impl Net {
    /// Starts a hub over `broker` after `setup` prepared its database (accounts, ATMs).
    pub async fn start(
        broker: BrokerConfig,
        client_id: &str,
        setup: impl FnOnce(&mut Rig) -> Vec<TestDevice>,
    ) -> (Net, Vec<TestDevice>) {
        Self::start_sweeping(broker, client_id, Duration::from_secs(3600), setup).await
    }

    /// Like [`Net::start`] with the sweeper running every `sweep_interval`.
    pub async fn start_sweeping(
        broker: BrokerConfig,
        client_id: &str,
        sweep_interval: Duration,
        setup: impl FnOnce(&mut Rig) -> Vec<TestDevice>,
    ) -> (Net, Vec<TestDevice>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("hub.sqlite")).expect("database");
        let mut rig = Rig::new(store, test_config(), 7);
        let devices = setup(&mut rig);
        let net = Self::start_rig(broker, client_id, sweep_interval, rig, dir).await;
        (net, devices)
    }

    /// Starts the hub of `rig` (its database in `dir`) as a service.
    pub async fn start_rig(
        broker: BrokerConfig,
        client_id: &str,
        sweep_interval: Duration,
        rig: Rig,
        dir: tempfile::TempDir,
    ) -> Net {
        let hub_key = rig.hub_key();
        let hub_id = rig.hub_id();
        let Rig { hub, clock } = rig;
        let options = ServiceOptions {
            broker,
            client_id: client_id.to_owned(),
            shared_subscription: false,
            group_commit_max: 64,
            sweep_interval,
        };
        let handle = HubService::start(hub, options).await.expect("hub starts");
        assert!(
            handle.wait_ready(WAIT).await,
            "hub did not subscribe in time"
        );
        Net {
            handle,
            clock,
            hub_key,
            hub_id,
            dir,
        }
    }

    /// Now on the hub's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Stops the hub and returns it (its database for checks).
    pub async fn stop(self) -> Hub {
        self.handle.shutdown().await.expect("hub returned")
    }
}

/// A phone or ATM on the broker.
pub struct Peer {
    pub dev: TestDevice,
    pub client: TestClient,
    pub atm: bool,
}

impl Peer {
    /// Connects `dev` and subscribes to its down-link (ATM) or push (phone) topic.
    pub async fn connect(cfg: &BrokerConfig, dev: TestDevice, atm: bool) -> Peer {
        let mut client = TestClient::connect(cfg, &dev.id)
            .await
            .unwrap_or_else(|e| panic!("{} cannot connect: {e}", dev.id));
        let inbox = if atm {
            topics::atm_down(&dev.id)
        } else {
            topics::phone_push(&dev.id)
        };
        client.subscribe(&inbox).await;
        Peer { dev, client, atm }
    }

    /// Signs and publishes a phone message; returns the claims sent.
    pub async fn phone(&mut self, net: &Net, msg: PhoneUp) -> Claims<PhoneUp> {
        let claims = self.dev.claims(&net.hub_id, net.now(), msg);
        let bytes = self.dev.seal(&claims);
        self.send_raw(bytes).await;
        claims
    }

    /// Signs and publishes an ATM message; returns the claims sent.
    pub async fn atm(&mut self, net: &Net, msg: AtmUp) -> Claims<AtmUp> {
        let claims = self.dev.claims(&net.hub_id, net.now(), msg);
        let bytes = self.dev.seal(&claims);
        self.send_raw(bytes).await;
        claims
    }

    /// Publishes raw bytes on this device's up-link.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        let topic = if self.atm {
            self.dev.atm_up()
        } else {
            self.dev.phone_up()
        };
        self.client.publish(&topic, bytes).await;
    }

    async fn next(&mut self) -> qrcash_hub::handler::Outgoing {
        let (topic, payload) = self
            .client
            .next_publish(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no answer within {WAIT:?}", self.dev.id));
        qrcash_hub::handler::Outgoing::new(topic, payload)
    }

    /// The next push to this phone, opened with the hub key.
    pub async fn push(&mut self, net: &Net) -> Claims<PhonePush> {
        let out = self.next().await;
        qrcash_hub::testkit::open(&out, &net.hub_key)
    }

    /// The next down-link message to this ATM, opened with the hub key.
    pub async fn down(&mut self, net: &Net) -> Claims<AtmDown> {
        let out = self.next().await;
        qrcash_hub::testkit::open(&out, &net.hub_key)
    }

    /// Whether nothing arrives within `quiet`.
    pub async fn silent(&mut self, quiet: Duration) -> bool {
        self.client.next_publish(quiet).await.is_none()
    }
}
