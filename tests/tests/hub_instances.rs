//! Several hub instances at once on one PostgreSQL database (docs/deployment.md §6): three
//! hub processes subscribed through `$share/hub/` on a private Mosquitto, so any of them may
//! get any message of any flow. Withdrawals run one after another; in each, right after one of
//! its four messages went out, one instance is SIGKILLed and started again, as a supervisor
//! would; once, right after a confirmation, PostgreSQL itself is restarted. The devices
//! publish the same bytes again until they are answered (as the protocol asks), the live
//! instances' sweepers publish from the outbox what a killed one committed and never sent,
//! the instances connect to the database again and run again what it cut, and in the end every withdrawal was ordered once, paid out once and settled
//! once, the books balance and nothing is left to send.

use std::path::Path;
use std::time::{Duration, Instant};

use qrcash_hub::admin;
use qrcash_hub::handler::Outgoing;
use qrcash_hub::ledger::LedgerAccount;
use qrcash_hub::store::{Store, ledger, outbox, rows, settlement};
use qrcash_hub::testkit::{
    PIN, Rig, TestDevice, confirm_message, near_atm, open, report_message, test_config,
    test_hub_key,
};
use qrcash_hub::withdrawal::Phase;
use qrcash_io::{BrokerConfig, KeyFile};
use qrcash_protocol::messages::{
    AtmDown, AtmUp, CodePresented, DispenseOutcome, PhonePush, PhoneUp, ReceiptStatus,
    RegisterWithdrawal,
};
use qrcash_protocol::{Amount, Claims, Clock, Currency, OrderId, PublicKey, SystemClock, TxId};
use qrcash_tests::broker::Mosquitto;
use qrcash_tests::instances::Instances;
use qrcash_tests::mqtt::TestClient;
use qrcash_tests::postgres::{Postgres, blocking};

const INSTANCES: usize = 3;
const WITHDRAWALS: usize = 9;
/// The withdrawal during which PostgreSQL is restarted.
const RESTART_DATABASE: usize = 5;
const AMOUNT: u64 = 10_000;
const START: u64 = 1_000_000;
/// A device publishes the same bytes again after this long without its answer.
const RESEND: Duration = Duration::from_secs(2);
/// Longest wait for one answer (a killed instance's commit reaches the outbox's resend after
/// `outbox_retry_s` plus a sweep).
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_load_and_a_killed_one_loses_nothing() {
    // Its own server: it is restarted in the middle of a withdrawal.
    let pg = Postgres::private();
    let url = pg.database();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();

    // The database, prepared as an operator would, and one configuration per instance.
    let key = test_hub_key();
    let key_file = dir.path().join("hub-key.jwk");
    key.save(&key_file).unwrap();
    let mut config = test_config();
    config.key_file = key_file;
    config.broker.url = broker.url();
    config.broker.shared_subscription = true;
    config.storage.database_url = Some(url.clone());
    config.storage.sweep_interval_s = 1;
    config.storage.outbox_retry_s = 5;
    config.withdrawal.daily = START;
    let (atm_dev, phone_dev) = blocking(|| {
        let store = Store::open_postgres(&url).unwrap();
        let mut rig = Rig::with_key(store, config.clone(), 1, key.clone());
        rig.clock.set(SystemClock.now());
        rig.account("hanako", START);
        let atm_dev = rig.atm("atm-1");
        let mut phone_dev = TestDevice::new("phone-1");
        rig.login(&mut phone_dev, "hanako");
        (atm_dev, phone_dev)
    });
    let mut hubs = Instances::new(
        Path::new(env!("CARGO_BIN_EXE_qrcash-fault-campaign")),
        dir.path(),
        INSTANCES,
        "warn,qrcash_hub::service=debug",
    );
    for i in 0..INSTANCES {
        let mut c = config.clone();
        c.broker.client_id = format!("hub-{i}");
        std::fs::write(hubs.config(i), toml::to_string(&c).unwrap()).unwrap();
        hubs.spawn(i).unwrap();
    }
    hubs.wait_all_ready().await.unwrap();

    let cfg = BrokerConfig::plain(broker.url());
    let mut world = World {
        phone: Side::connect(&cfg, phone_dev, false).await,
        atm: Side::connect(&cfg, atm_dev, true).await,
        hub_id: config.hub_id.clone(),
        hub_key: key.public().clone(),
        inbox: Vec::new(),
        orders: Vec::new(),
        sent: 0,
    };

    let mut done: Vec<(TxId, OrderId)> = Vec::new();
    for n in 0..WITHDRAWALS {
        // Which message the kill follows, which instance dies, and how soon after.
        let step = n % 4;
        let victim = n % INSTANCES;
        let after = Duration::from_millis((n as u64 * 7) % 25);
        let kill = |hubs: &mut Instances, at: usize| {
            if at == step {
                std::thread::sleep(after);
                hubs.kill_and_restart(victim).unwrap();
            }
            // Once, right after a confirmation: every instance loses its connection and
            // runs what it was doing again once the database is back.
            if n == RESTART_DATABASE && at == 2 {
                pg.restart();
            }
        };

        let register = world.phone.seal(
            &world.hub_id,
            PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                account: "hanako".into(),
                amount: Amount::new(AMOUNT, Currency::JPY),
            }),
        );
        world.send(Who::Phone, &register.1).await;
        kill(&mut hubs, 0);
        let code = world
            .until(Some((Who::Phone, register.1.as_slice())), |d| match d {
                Down::Push(c) if c.re.as_deref() == Some(register.0.as_str()) => match &c.msg {
                    PhonePush::CodeIssued(code) => Some(code.clone()),
                    other => panic!("registration answered with {other:?}"),
                },
                _ => None,
            })
            .await;

        let present = world.atm.seal(
            &world.hub_id,
            AtmUp::CodePresented(CodePresented {
                token: code.token.clone(),
            }),
        );
        world.send(Who::Atm, &present.1).await;
        kill(&mut hubs, 1);
        let tx = code.tx_id;
        let request = world
            .until(Some((Who::Atm, present.1.as_slice())), |d| match d {
                Down::Push(c) => match &c.msg {
                    PhonePush::ConfirmRequest(r) if r.tx_id == tx => Some(r.clone()),
                    _ => None,
                },
                _ => None,
            })
            .await;

        let msg = confirm_message(&world.phone.dev, &request, Some(PIN), Some(near_atm()));
        let confirm = world.phone.seal(&world.hub_id, msg);
        world.send(Who::Phone, &confirm.1).await;
        kill(&mut hubs, 2);
        let order = world
            .until(Some((Who::Phone, confirm.1.as_slice())), |d| match d {
                Down::Atm(c) => match &c.msg {
                    AtmDown::DispenseOrder(o) if o.tx_id == tx => Some(o.clone()),
                    _ => None,
                },
                _ => None,
            })
            .await;

        let msg = report_message(&order, DispenseOutcome::Dispensed, AMOUNT);
        let report = world.atm.seal(&world.hub_id, msg);
        world.send(Who::Atm, &report.1).await;
        kill(&mut hubs, 3);
        let receipt = world
            .until(Some((Who::Atm, report.1.as_slice())), |d| match d {
                Down::Push(c) => match &c.msg {
                    PhonePush::Receipt(r) if r.reference == tx.to_string() => Some(r.clone()),
                    _ => None,
                },
                _ => None,
            })
            .await;
        assert_eq!(receipt.status, ReceiptStatus::Completed, "withdrawal {n}");
        world
            .until(Some((Who::Atm, report.1.as_slice())), |d| match d {
                Down::Atm(c) => match &c.msg {
                    AtmDown::Ack(a) if a.ids.contains(&report.0) => Some(()),
                    _ => None,
                },
                _ => None,
            })
            .await;
        done.push((tx, order.order_id));
    }

    // Every instance is back; what one of them committed and did not confirm goes out within
    // `outbox_retry_s` plus a sweep, and is then confirmed.
    hubs.wait_all_ready().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let backlog =
            blocking(|| outbox::backlog(Store::open_postgres(&url).unwrap().db()).unwrap());
        if backlog.0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in the outbox: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Copies still on their way (a resend, a repeat's answers) are read before the count.
    world.drain(Duration::from_secs(1)).await;
    hubs.stop_all();

    // One order per withdrawal, however many copies of it the ATM received.
    for (tx, order) in &done {
        let ids: std::collections::BTreeSet<OrderId> = world
            .orders
            .iter()
            .filter(|(t, _)| t == tx)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(ids.len(), 1, "tx {tx}: orders {ids:?}");
        assert!(ids.contains(order));
    }
    blocking(|| books(&url, &done));
    // The broker shared the load: every instance handled messages, and each message the
    // devices published reached one instance of the group (not every one).
    let handled: Vec<usize> = (0..INSTANCES).map(|i| hubs.handled(i)).collect();
    eprintln!(
        "published {} (copies included), handled per instance {handled:?}, starts {:?}",
        world.sent,
        hubs.starts()
    );
    assert!(
        handled.iter().all(|&n| n > 0) && handled.iter().sum::<usize>() <= world.sent,
        "messages handled per instance {handled:?}, published {}",
        world.sent
    );
    assert!(
        hubs.starts().iter().sum::<usize>() > INSTANCES,
        "instances were killed and started again"
    );
}

/// Each withdrawal settled once with one applied report, the customer's balance down by
/// exactly what was paid, and the books right.
fn books(url: &str, done: &[(TxId, OrderId)]) {
    let store = Store::open_postgres(url).unwrap();
    for (tx, _) in done {
        let w = rows::withdrawal(store.db(), tx).unwrap().unwrap();
        assert_eq!((w.phase, w.settled), (Phase::Dispensed, AMOUNT), "tx {tx}");
        let applied = settlement::received_reports(store.db(), tx)
            .unwrap()
            .iter()
            .filter(|r| r.applied)
            .count();
        assert_eq!(applied, 1, "tx {tx}: reports applied");
    }
    let paid = AMOUNT * done.len() as u64;
    let available =
        ledger::balance(store.db(), &LedgerAccount::Available("hanako".into())).unwrap();
    let held = ledger::balance(store.db(), &LedgerAccount::Held("hanako".into())).unwrap();
    assert_eq!(
        (available, held),
        ((START - paid) as i64, 0),
        "each withdrawal captured once"
    );
    let books = admin::ledger_check(&store).unwrap();
    assert!(books.is_ok(), "{books}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Phone,
    Atm,
}

/// A message the hub sent, opened.
#[derive(Debug)]
enum Down {
    Push(Claims<PhonePush>),
    Atm(Claims<AtmDown>),
}

/// A device on the broker.
struct Side {
    dev: TestDevice,
    client: TestClient,
    atm: bool,
}

impl Side {
    async fn connect(cfg: &BrokerConfig, dev: TestDevice, atm: bool) -> Side {
        let mut client = TestClient::connect(cfg, &dev.id).await.unwrap();
        let inbox = if atm {
            qrcash_protocol::topics::atm_down(&dev.id)
        } else {
            qrcash_protocol::topics::phone_push(&dev.id)
        };
        client.subscribe(&inbox).await;
        Side { dev, client, atm }
    }

    /// Signs `msg` once: its `jti` and the bytes to publish (again, unchanged, on a resend).
    fn seal<B: serde::Serialize>(&mut self, hub_id: &str, msg: B) -> (String, Vec<u8>) {
        let claims = self.dev.claims(hub_id, SystemClock.now(), msg);
        (claims.jti.clone(), self.dev.seal(&claims))
    }

    fn up(&self) -> String {
        if self.atm {
            self.dev.atm_up()
        } else {
            self.dev.phone_up()
        }
    }
}

struct World {
    phone: Side,
    atm: Side,
    hub_id: String,
    hub_key: PublicKey,
    /// Received and not yet picked by a wait.
    inbox: Vec<Down>,
    /// Every order the ATM received, copies included.
    orders: Vec<(TxId, OrderId)>,
    /// Messages the devices published, copies included.
    sent: usize,
}

impl World {
    async fn send(&mut self, who: Who, bytes: &[u8]) {
        let side = match who {
            Who::Phone => &mut self.phone,
            Who::Atm => &mut self.atm,
        };
        let topic = side.up();
        side.client.publish(&topic, bytes.to_vec()).await;
        self.sent += 1;
    }

    /// Reads what arrives on both devices for `quiet`.
    async fn drain(&mut self, quiet: Duration) {
        let end = Instant::now() + quiet;
        while Instant::now() < end {
            self.receive().await;
        }
    }

    /// One short poll of both devices.
    async fn receive(&mut self) {
        let poll = Duration::from_millis(25);
        if let Some((topic, payload)) = self.phone.client.next_publish(poll).await {
            let c: Claims<PhonePush> = open(&Outgoing::new(topic, payload), &self.hub_key);
            self.inbox.push(Down::Push(c));
        }
        if let Some((topic, payload)) = self.atm.client.next_publish(poll).await {
            let c: Claims<AtmDown> = open(&Outgoing::new(topic, payload), &self.hub_key);
            if let AtmDown::DispenseOrder(o) = &c.msg {
                self.orders.push((o.tx_id, o.order_id));
            }
            self.inbox.push(Down::Atm(c));
        }
    }

    /// The first message `want` picks (received before or from now on), publishing `resend`
    /// again every [`RESEND`] until then.
    async fn until<T>(
        &mut self,
        resend: Option<(Who, &[u8])>,
        mut want: impl FnMut(&Down) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        let mut next_resend = Instant::now() + RESEND;
        let mut scanned = 0;
        loop {
            while scanned < self.inbox.len() {
                if let Some(t) = want(&self.inbox[scanned]) {
                    self.inbox.remove(scanned);
                    return t;
                }
                scanned += 1;
            }
            assert!(
                Instant::now() < deadline,
                "no answer within {WAIT:?}; received meanwhile: {:#?}",
                self.inbox
            );
            if let Some((who, bytes)) = resend
                && Instant::now() >= next_resend
            {
                self.send(who, bytes).await;
                next_resend = Instant::now() + RESEND;
            }
            self.receive().await;
        }
    }
}
