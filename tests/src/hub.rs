//! An in-process hub for the end-to-end suites: the real `HubService` over a SQLite file
//! with a hand-moved clock, the accounts `hanako` (¥100,000, with the payout account
//! `bank-hanako` and the funding account `fund-hanako`) and `taro` (¥0), the merchant `cafe`
//! and one ATM in Shibuya with ¥10,000 and ¥1,000 cassettes.

use std::path::Path;
use std::time::Duration;

use qrcash_hub::admin::{self, NewAtm};
use qrcash_hub::service::{HubHandle, HubService, ServiceOptions};
use qrcash_hub::store::Store;
use qrcash_hub::testkit::{Rig, SHIBUYA, test_config};
use qrcash_io::BrokerConfig;
use qrcash_protocol::{ManualClock, Position, PrivateKey, PublicKey};

/// A running hub and what the other parties need from it.
pub struct TestHub {
    /// The service.
    pub service: HubHandle,
    /// Its public key, which phones and ATMs trust.
    pub hub_key: PublicKey,
    /// Its clock; share it with the agent and phones so deadlines agree.
    pub clock: ManualClock,
    /// The enrolled ATM's signing key.
    pub atm_key: PrivateKey,
}

/// Starts the hub with its database in `dir`, randomness from `seed`, ATM `atm_id`
/// enrolled, on the broker at `broker_url`; returns once it is subscribed.
///
/// # Panics
/// If any part fails to start within 20 s: the suites cannot go on without it.
pub async fn start(dir: &Path, broker_url: &str, seed: u64, atm_id: &str) -> TestHub {
    start_on(dir, BrokerConfig::plain(broker_url), seed, atm_id).await
}

/// [`start`] on a broker reached with `broker` (TLS and a client certificate, say).
///
/// # Panics
/// As [`start`].
pub async fn start_on(dir: &Path, broker: BrokerConfig, seed: u64, atm_id: &str) -> TestHub {
    let store = Store::open(&dir.join("hub.sqlite")).expect("hub database");
    let mut rig = Rig::new(store, test_config(), seed);
    rig.account("hanako", 100_000);
    rig.account("taro", 0);
    rig.merchant("cafe");
    rig.bank_account("bank-hanako", "hanako");
    let atm_key = PrivateKey::generate();
    let now = rig.now();
    admin::enroll_atm(
        rig.hub.store_mut(),
        &NewAtm {
            id: atm_id.into(),
            public_key: atm_key.public().to_jwk(),
            name: "Shibuya 1".into(),
            address: "2-24-1 Shibuya, Tokyo".into(),
            position: Position::new(SHIBUYA.0, SHIBUYA.1, 0.0),
            denominations: vec![10_000, 1_000],
        },
        now,
    )
    .expect("enrol ATM");
    let hub_key = rig.hub_key();
    let clock = rig.clock.clone();
    let service = HubService::start(
        rig.hub,
        ServiceOptions {
            broker,
            client_id: "hub".into(),
            shared_subscription: false,
            group_commit_max: 64,
            sweep_interval: Duration::from_secs(3600),
        },
    )
    .await
    .expect("hub service");
    assert!(
        service.wait_ready(Duration::from_secs(20)).await,
        "the hub did not subscribe"
    );
    TestHub {
        service,
        hub_key,
        clock,
        atm_key,
    }
}
