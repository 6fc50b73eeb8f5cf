//! Test support shared by the hub's unit tests, the end-to-end suites and the demo: signed
//! test devices (phones and ATMs with their own keys and sequence counters), a [`Rig`] around
//! a [`Hub`] with a hand-moved clock and seeded randomness, and helpers that open the hub's
//! answers. Real keys, real signatures, real SQLite; nothing here is mocked.

use std::sync::Arc;
use std::time::Duration;

use qrcash_protocol::messages::{
    AtmDown, AtmUp, CodeIssued, ConfirmRequest, ConfirmWithdrawal, DeviceInfo, DispenseOrder,
    DispenseOutcome, DispenseReport, IdentityEvidence, Login, NoteOutcome, PhonePush, PhoneUp,
    RegisterWithdrawal,
};
use qrcash_protocol::{
    Amount, Claims, Currency, ManualClock, PrivateKey, PublicKey, SealedSecret, SecretField,
    SecretSealer, Signer, envelope, topics,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::{self, NewAccount, NewAtm, NewMerchant};
use crate::config::HubConfig;
use crate::handler::{Handled, Hub, Outgoing};
use crate::identity::HashCost;
use crate::rng::SeededEntropy;
use crate::store::Store;
use crate::warnings::WarningCatalog;

/// A fixed start time: 2027-01-15 08:00 UTC (17:00 in Japan, outside late hours).
pub const T0: u64 = 1_800_000_000;
/// Shibuya, where the test ATMs stand.
pub const SHIBUYA: (f64, f64) = (35.6595, 139.7005);
/// The PIN of every test account.
pub const PIN: &str = "1234";

/// The password of a test account.
pub fn password(account: &str) -> String {
    format!("password-of-{account}")
}

/// The default configuration with cheap argon2 costs (tests hash a lot).
pub fn test_config() -> HubConfig {
    let mut c = HubConfig::default();
    c.auth.argon2_memory_kib = HashCost::TEST.memory_kib;
    c.auth.argon2_iterations = HashCost::TEST.iterations;
    c
}

/// A signing device: a phone or an ATM agent, with its own key and persisted-style `seq`.
#[derive(Debug, Clone)]
pub struct TestDevice {
    /// Its id (topic id and `iss`).
    pub id: String,
    /// Its key.
    pub key: PrivateKey,
    /// The last `seq` used.
    pub seq: u64,
    /// Message lifetime.
    pub ttl: Duration,
}

impl TestDevice {
    /// A device with a fresh key.
    pub fn new(id: &str) -> Self {
        TestDevice {
            id: id.to_owned(),
            key: PrivateKey::generate(),
            seq: 0,
            ttl: Duration::from_secs(60),
        }
    }

    /// Claims for `msg` to `aud` at `now`, with the next `seq`.
    pub fn claims<B>(&mut self, aud: &str, now: u64, msg: B) -> Claims<B> {
        self.seq += 1;
        Claims::new(&self.id, aud, self.seq, now, self.ttl, msg)
    }

    /// Signs claims.
    pub fn seal<B: Serialize>(&self, claims: &Claims<B>) -> Vec<u8> {
        Signer::new(&self.id, self.key.clone())
            .seal(claims)
            .into_bytes()
    }

    /// Claims and signature in one step.
    pub fn message<B: Serialize>(&mut self, aud: &str, now: u64, msg: B) -> Vec<u8> {
        let c = self.claims(aud, now, msg);
        self.seal(&c)
    }

    /// Its up-link topic as a phone.
    pub fn phone_up(&self) -> String {
        topics::phone_up(&self.id)
    }

    /// Its up-link topic as an ATM.
    pub fn atm_up(&self) -> String {
        topics::atm_up(&self.id)
    }
}

/// Opens a hub answer with the hub's public key.
pub fn open<B: DeserializeOwned>(out: &Outgoing, hub: &PublicKey) -> Claims<B> {
    let opened = envelope::open::<B>(&out.payload, qrcash_protocol::MAX_DOWNLINK_BYTES, |_| {
        Some(hub.clone())
    });
    match opened {
        Ok(o) => o.claims,
        Err(e) => panic!("hub answer on {} does not open: {e}", out.topic),
    }
}

/// A hub over a store with a manual clock and seeded randomness, plus setup helpers.
#[derive(Debug)]
pub struct Rig {
    /// The hub under test.
    pub hub: Hub,
    /// Its clock.
    pub clock: ManualClock,
}

impl Rig {
    /// A rig over `store` with `config`, the clock at [`T0`], randomness from `seed`.
    pub fn new(store: Store, config: HubConfig, seed: u64) -> Rig {
        Self::with_key(store, config, seed, test_hub_key())
    }

    /// Like [`Rig::new`] with a given hub key (several hub instances sharing a database).
    pub fn with_key(store: Store, config: HubConfig, seed: u64, key: PrivateKey) -> Rig {
        let clock = ManualClock::new(T0);
        let warnings =
            WarningCatalog::load(config.warnings.file.as_deref(), &config.warnings.languages)
                .unwrap_or_else(|e| panic!("warnings: {e}"));
        let hub = Hub::new(
            store,
            Signer::new(config.hub_id.clone(), key),
            config,
            warnings,
            Arc::new(clock.clone()),
            Box::new(SeededEntropy::new(seed)),
        );
        Rig { hub, clock }
    }

    /// A rig over a fresh test database ([`Store::open_test`]: in-memory SQLite, or
    /// PostgreSQL under `QRCASH_TEST_BACKEND=postgres`) with the test configuration.
    pub fn in_memory(seed: u64) -> Rig {
        Rig::new(Store::open_test(), test_config(), seed)
    }

    /// The same rig with the hub's transactional outbox on, as the service runs it
    /// ([`Hub::with_outbox`]).
    pub fn with_outbox(self) -> Rig {
        Rig {
            hub: self.hub.with_outbox(),
            ..self
        }
    }

    /// Now on the rig's clock.
    pub fn now(&self) -> u64 {
        use qrcash_protocol::Clock as _;
        self.clock.now()
    }

    /// The hub's public key.
    pub fn hub_key(&self) -> PublicKey {
        self.hub.signer().key().public().clone()
    }

    /// The hub's id.
    pub fn hub_id(&self) -> String {
        self.hub.signer().id().to_owned()
    }

    /// Creates an account with [`password`] and [`PIN`] and an opening balance in yen.
    pub fn account(&mut self, id: &str, balance: u64) {
        let now = self.now();
        admin::create_account(
            self.hub.store_mut(),
            &NewAccount {
                id: id.into(),
                currency: Currency::JPY,
                password: password(id),
                pin: PIN.into(),
                opening_balance: balance,
            },
            HashCost::TEST,
            now,
        )
        .unwrap_or_else(|e| panic!("account {id}: {e}"));
        admin::add_bank_account(
            self.hub.store_mut(),
            &admin::NewBankAccount {
                id: funding(id),
                account: id.into(),
                bank: "Test Bank".into(),
                number: "0000001".into(),
                holder: id.to_uppercase(),
            },
            now,
        )
        .unwrap_or_else(|e| panic!("funding account of {id}: {e}"));
    }

    /// Enrols an ATM at `position` carrying 10,000, 5,000 and 1,000 yen notes.
    pub fn atm_at(&mut self, id: &str, position: (f64, f64)) -> TestDevice {
        let dev = TestDevice::new(id);
        let now = self.now();
        admin::enroll_atm(
            self.hub.store_mut(),
            &NewAtm {
                id: id.into(),
                public_key: dev.key.public().to_jwk(),
                name: format!("ATM {id}"),
                address: "2-24-1 Shibuya, Tokyo".into(),
                position: qrcash_protocol::Position::new(position.0, position.1, 0.0),
                denominations: vec![10_000, 5_000, 1_000],
            },
            now,
        )
        .unwrap_or_else(|e| panic!("atm {id}: {e}"));
        dev
    }

    /// Enrols an ATM in Shibuya.
    pub fn atm(&mut self, id: &str) -> TestDevice {
        self.atm_at(id, SHIBUYA)
    }

    /// Registers a merchant in Shibuya.
    pub fn merchant(&mut self, id: &str) {
        let now = self.now();
        admin::add_merchant(
            self.hub.store_mut(),
            &NewMerchant {
                id: id.into(),
                name: format!("Shop {id}"),
                currency: Currency::JPY,
                position: qrcash_protocol::Position::new(SHIBUYA.0, SHIBUYA.1, 0.0),
            },
            now,
        )
        .unwrap_or_else(|e| panic!("merchant {id}: {e}"));
    }

    /// Registers bank account `id` (Mizuho 1234567) for payouts of `account`.
    pub fn bank_account(&mut self, id: &str, account: &str) {
        let now = self.now();
        admin::add_bank_account(
            self.hub.store_mut(),
            &admin::NewBankAccount {
                id: id.into(),
                account: account.into(),
                bank: "Mizuho".into(),
                number: "1234567".into(),
                holder: account.to_uppercase(),
            },
            now,
        )
        .unwrap_or_else(|e| panic!("bank account {id}: {e}"));
    }

    /// Sends a phone message.
    pub fn phone(&mut self, dev: &mut TestDevice, msg: PhoneUp) -> Handled {
        let bytes = dev.message(&self.hub_id(), self.now(), msg);
        self.hub.handle(&dev.phone_up(), &bytes)
    }

    /// Sends an ATM message.
    pub fn atm_send(&mut self, dev: &mut TestDevice, msg: AtmUp) -> Handled {
        let bytes = dev.message(&self.hub_id(), self.now(), msg);
        self.hub.handle(&dev.atm_up(), &bytes)
    }

    /// Logs `dev` in to `account` at the ATM's place.
    pub fn login(&mut self, dev: &mut TestDevice, account: &str) -> Handled {
        let msg = login_message(dev, account, Some(near_atm()));
        self.phone(dev, msg)
    }

    /// The pushes to `device` among `out`, opened.
    pub fn pushes(&self, out: &[Outgoing], device: &str) -> Vec<Claims<PhonePush>> {
        let topic = topics::phone_push(device);
        out.iter()
            .filter(|o| o.topic == topic)
            .map(|o| open(o, &self.hub_key()))
            .collect()
    }

    /// The messages to ATM `atm` among `out`, opened.
    pub fn downs(&self, out: &[Outgoing], atm: &str) -> Vec<Claims<AtmDown>> {
        let topic = topics::atm_down(atm);
        out.iter()
            .filter(|o| o.topic == topic)
            .map(|o| open(o, &self.hub_key()))
            .collect()
    }

    /// Registers a withdrawal; panics unless a code is issued.
    pub fn register(&mut self, phone: &mut TestDevice, account: &str, yen: u64) -> CodeIssued {
        let h = self.phone(
            phone,
            PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                account: account.into(),
                amount: Amount::new(yen, Currency::JPY),
            }),
        );
        match self.pushes(&h.outgoing, &phone.id).pop().map(|c| c.msg) {
            Some(PhonePush::CodeIssued(c)) => c,
            other => panic!("expected CodeIssued, got {other:?} ({:?})", h.result),
        }
    }

    /// Presents a code at `atm`; returns the ConfirmRequest pushed to `phone_id`.
    pub fn present(&mut self, atm: &mut TestDevice, token: &str, phone_id: &str) -> ConfirmRequest {
        let h = self.atm_send(
            atm,
            AtmUp::CodePresented(qrcash_protocol::messages::CodePresented {
                token: token.into(),
            }),
        );
        match self.pushes(&h.outgoing, phone_id).pop().map(|c| c.msg) {
            Some(PhonePush::ConfirmRequest(r)) => r,
            other => panic!("expected ConfirmRequest, got {other:?} ({:?})", h.result),
        }
    }

    /// Confirms with the right PIN at the ATM; returns the hub's answer.
    pub fn confirm(&mut self, phone: &mut TestDevice, req: &ConfirmRequest) -> Handled {
        let msg = confirm_message(phone, req, Some(PIN), Some(near_atm()));
        self.phone(phone, msg)
    }

    /// Confirms and returns the dispense order; panics if none was sent.
    pub fn confirm_order(&mut self, phone: &mut TestDevice, req: &ConfirmRequest) -> DispenseOrder {
        let h = self.confirm(phone, req);
        self.order(&h.outgoing, &req.atm.atm_id)
            .unwrap_or_else(|| panic!("no dispense order: {:?}", h.result))
    }

    /// The dispense order among `out` for `atm`.
    pub fn order(&self, out: &[Outgoing], atm: &str) -> Option<DispenseOrder> {
        self.downs(out, atm).into_iter().find_map(|c| match c.msg {
            AtmDown::DispenseOrder(o) => Some(o),
            _ => None,
        })
    }

    /// Reports a dispense of `exited_yen` for `order`.
    pub fn report(
        &mut self,
        atm: &mut TestDevice,
        order: &DispenseOrder,
        outcome: DispenseOutcome,
        exited_yen: u64,
    ) -> Handled {
        let msg = report_message(order, outcome, exited_yen);
        self.atm_send(atm, msg)
    }
}

/// The funding account [`Rig::account`] links to every test account (top-ups draw on it).
pub fn funding(account: &str) -> String {
    format!("fund-{account}")
}

/// A position a few metres from the test ATM, accurate to 10 m.
pub fn near_atm() -> qrcash_protocol::Position {
    qrcash_protocol::Position::new(SHIBUYA.0 + 0.0001, SHIBUYA.1, 10.0)
}

/// The hub key of every rig made by [`Rig::new`] (fixed, so that the message builders below
/// can seal secrets to it without a rig at hand).
pub fn test_hub_key() -> PrivateKey {
    PrivateKey::from_bytes([0x5a; 32])
}

/// `secret` sealed as `field` of a message from `dev` to the test hub key.
pub fn seal_for(dev: &TestDevice, field: SecretField, secret: &str) -> SealedSecret {
    SecretSealer::new(
        test_hub_key().public().clone(),
        dev.id.clone(),
        dev.key.kid().clone(),
    )
    .seal(field, secret)
    .unwrap_or_else(|e| panic!("seal: {e}"))
}

/// A `Login` for `dev` carrying its own key.
pub fn login_message(
    dev: &TestDevice,
    account: &str,
    position: Option<qrcash_protocol::Position>,
) -> PhoneUp {
    PhoneUp::Login(Login {
        account: account.into(),
        password: seal_for(dev, SecretField::Password, &password(account)),
        device: DeviceInfo {
            device_id: dev.id.clone(),
            name: format!("phone {}", dev.id),
            public_key: dev.key.public().to_jwk(),
        },
        position,
    })
}

/// A `ConfirmWithdrawal` from `dev` echoing the request exactly.
pub fn confirm_message(
    dev: &TestDevice,
    req: &ConfirmRequest,
    pin: Option<&str>,
    position: Option<qrcash_protocol::Position>,
) -> PhoneUp {
    PhoneUp::ConfirmWithdrawal(ConfirmWithdrawal {
        tx_id: req.tx_id,
        atm_id: req.atm.atm_id.clone(),
        amount: req.amount,
        challenge: req.challenge.clone(),
        position,
        identity: IdentityEvidence {
            pin: pin.map(|p| seal_for(dev, SecretField::Pin, p)),
            biometric: None,
        },
    })
}

/// A `DispenseReport` for `order` with notes taken greedily up to `exited_yen`.
pub fn report_message(order: &DispenseOrder, outcome: DispenseOutcome, exited_yen: u64) -> AtmUp {
    let mut left = exited_yen;
    let notes = order
        .notes
        .iter()
        .map(|n| {
            let exited =
                u32::try_from((left / n.denomination).min(u64::from(n.count))).unwrap_or(u32::MAX);
            left -= u64::from(exited) * n.denomination;
            NoteOutcome {
                denomination: n.denomination,
                requested: n.count,
                picked: exited,
                exited,
                rejected: 0,
            }
        })
        .collect();
    AtmUp::DispenseReport(DispenseReport {
        order_id: order.order_id,
        tx_id: order.tx_id,
        notes,
        dispensed: Amount::new(exited_yen - left, order.amount.currency),
        outcome,
        device_error: None,
        max_dispensed: None,
        source: None,
    })
}
