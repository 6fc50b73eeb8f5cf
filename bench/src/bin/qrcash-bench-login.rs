//! `qrcash-bench-login`: how many password guesses one attacker can force through the hub,
//! and what that does to everyone else's latency, before and after login throttling and the
//! secret workers (account-takeover issue, hole 3).
//!
//! Not a test: a release-build benchmark run by `scripts/bench-login.sh`, which rewrites the
//! "## Password guessing" section of `docs/BENCHMARKS.md`. The hub service runs in this
//! process over a durable SQLite file and a private Mosquitto, with the production argon2
//! cost (19 MiB, 2 iterations). An honest phone logs in and asks for its balance in a loop
//! (one request at a time, signed, answers verified) while an attacker publishes wrong-password
//! logins at 200 a second, three ways: from one device id, from a new device
//! id every time against the same account, and from a new device id every time against
//! made-up account names. "Before" turns the defences off (`secret_workers = 0`, no
//! throttle): the hub as it was, checking every guess on its single writer.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use qrcash_bench::report::{loadavg, machine, update_section};
use qrcash_hub::admin::{self, NewAccount};
use qrcash_hub::config::HubConfig;
use qrcash_hub::service::{HubService, ServiceOptions};
use qrcash_hub::store::Store;
use qrcash_hub::testkit::{Rig, TestDevice, login_message, seal_for, test_config};
use qrcash_io::{BrokerConfig, mqtt_options};
use qrcash_phone::{DeviceStore, PhoneClient, PhoneSettings};
use qrcash_protocol::messages::{PhonePush, PhoneUp, RejectReason};
use qrcash_protocol::{
    Clock as _, MAX_DOWNLINK_BYTES, PrivateKey, Sealed, SecretField, SystemClock,
};
use qrcash_testsupport::broker::Mosquitto;
use rumqttc::{AsyncClient, Event, Packet, QoS};

const HEADING: &str = "## Password guessing";
const PASSWORD: &str = "correct horse battery";
/// How long the honest phone waits for its balance before counting it unanswered.
const HONEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The attacker's sending rate, messages per second (one phone can send far more).
const ATTACK_RATE: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    OneDevice,
    NewDeviceEachGuess,
    UnknownAccounts,
}

impl Attack {
    fn describe(self) -> &'static str {
        match self {
            Attack::OneDevice => "one device id, the victim's account",
            Attack::NewDeviceEachGuess => "a new device id per guess, the victim's account",
            Attack::UnknownAccounts => "a new device id per guess, made-up account names",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    bad_credentials: AtomicU64,
    throttled: AtomicU64,
}

struct Outcome {
    defended: bool,
    attack: Option<Attack>,
    seconds: f64,
    sent: u64,
    evaluated: u64,
    throttled: u64,
    honest: Vec<Duration>,
    unanswered: u64,
    dropped: u64,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

async fn run(
    broker: &Mosquitto,
    defended: bool,
    attack: Option<Attack>,
    seconds: f64,
) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let mut config: HubConfig = test_config();
    config.auth.argon2_memory_kib = 19_456;
    config.auth.argon2_iterations = 2;
    if !defended {
        config.auth.secret_workers = 0;
        config.auth.login_free_failures = u32::MAX;
        config.auth.logins_per_device_per_minute = u32::MAX;
    }
    let cost = config.auth.hash_cost();
    let store = Store::open(&dir.path().join("hub.sqlite"))?;
    let mut rig = Rig::new(store, config, 7);
    let now = SystemClock.now();
    admin::create_account(
        rig.hub.store_mut(),
        &NewAccount {
            id: "hanako".into(),
            currency: qrcash_protocol::Currency::JPY,
            password: PASSWORD.into(),
            pin: "1234".into(),
            opening_balance: 100_000,
        },
        cost,
        now,
    )?;
    // The hub runs on the real clock for this benchmark.
    let hub_key = rig.hub_key();
    let hub_id = rig.hub_id();
    let hub = rig.hub.with_clock(Arc::new(SystemClock));
    let service = HubService::start(
        hub,
        ServiceOptions {
            broker: BrokerConfig::plain(broker.url()),
            client_id: "hub".into(),
            shared_subscription: false,
            group_commit_max: 64,
            sweep_interval: Duration::from_secs(3_600),
        },
    )
    .await?;
    if !service.wait_ready(Duration::from_secs(20)).await {
        bail!("the hub did not subscribe");
    }

    // The honest phone.
    let mut phone = PhoneClient::connect(
        PhoneSettings::new("phone-owner", BrokerConfig::plain(broker.url())),
        PrivateKey::generate(),
        hub_key,
        DeviceStore::in_memory(),
        Arc::new(SystemClock),
    )
    .await?;
    phone
        .login("hanako", PASSWORD, None, Duration::from_secs(30))
        .await
        .context("the honest phone's login")?;

    // The attacker: its own connection, answers counted from the push topics.
    let counts = Arc::new(Counts::default());
    let attacker = match attack {
        Some(a) => Some(spawn_attacker(broker, a, hub_id, counts.clone()).await?),
        None => None,
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut honest = Vec::new();
    let mut unanswered = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        match phone.balance("hanako", 0, HONEST_TIMEOUT).await {
            Ok(_) => honest.push(t.elapsed()),
            // Stuck behind the attacker's guesses: counted, and the row goes on.
            Err(qrcash_phone::PhoneError::Timeout { .. }) => unanswered += 1,
            Err(e) => return Err(e).context("the honest phone's balance"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Stop sending, let answers in flight arrive, then stop listening and count.
    if let Some([sender, listener]) = attacker {
        sender.abort();
        tokio::time::sleep(Duration::from_millis(500)).await;
        listener.abort();
    }
    let dropped = service.stats().secret_checks_dropped;
    phone.shutdown().await;
    service.shutdown().await;
    honest.sort();
    Ok(Outcome {
        defended,
        attack,
        seconds: elapsed,
        sent: counts.sent.load(Ordering::Relaxed),
        evaluated: counts.bad_credentials.load(Ordering::Relaxed),
        throttled: counts.throttled.load(Ordering::Relaxed),
        honest,
        unanswered,
        dropped,
    })
}

async fn spawn_attacker(
    broker: &Mosquitto,
    attack: Attack,
    hub_id: String,
    counts: Arc<Counts>,
) -> Result<[tokio::task::JoinHandle<()>; 2]> {
    // A client id of its own per row: a reused one would fight the previous row's connection.
    static ROWS: AtomicU64 = AtomicU64::new(0);
    let id = format!("attacker-{}", ROWS.fetch_add(1, Ordering::Relaxed));
    let mut opts = mqtt_options(&BrokerConfig::plain(broker.url()), &id)?;
    opts.set_max_packet_size(MAX_DOWNLINK_BYTES * 4, MAX_DOWNLINK_BYTES * 4);
    opts.set_inflight(200);
    let (client, mut events) = AsyncClient::new(opts, 1_000);
    client
        .subscribe("qrcash/v1/phone/+/push", QoS::AtMostOnce)
        .await?;
    let listen = counts.clone();
    let listener = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if !p.topic.contains("phone-owner") => {
                    let reason = Sealed::parse(&p.payload, MAX_DOWNLINK_BYTES * 4)
                        .ok()
                        .and_then(|s| s.peek::<PhonePush>().ok())
                        .and_then(|c| match c.msg {
                            PhonePush::Rejected(r) => Some(r.reason),
                            _ => None,
                        });
                    match reason {
                        Some(RejectReason::BadCredentials) => {
                            listen.bad_credentials.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(RejectReason::LoginThrottled { .. }) => {
                            listen.throttled.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let sender = tokio::spawn(async move {
        let mut one = TestDevice::new("phone-thief");
        let mut i = 0u64;
        loop {
            i += 1;
            let mut fresh;
            let (dev, account) = match attack {
                Attack::OneDevice => (&mut one, "hanako".to_owned()),
                Attack::NewDeviceEachGuess => {
                    fresh = TestDevice::new(&format!("thief-{i}"));
                    (&mut fresh, "hanako".to_owned())
                }
                Attack::UnknownAccounts => {
                    fresh = TestDevice::new(&format!("thief-{i}"));
                    (&mut fresh, format!("user-{i}"))
                }
            };
            let mut msg = login_message(dev, &account, None);
            if let PhoneUp::Login(l) = &mut msg {
                l.password = seal_for(dev, SecretField::Password, &format!("guess {i}"));
            }
            let payload = dev.message(&hub_id, SystemClock.now(), msg);
            if client
                .publish(dev.phone_up(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
            counts.sent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_micros(1_000_000 / ATTACK_RATE)).await;
        }
    });
    Ok([sender, listener])
}

fn table(rows: &[Outcome]) -> String {
    let mut s = String::from(
        "| hub | attack | guesses sent/s | guesses evaluated/s | refused `login_throttled` | guesses dropped | honest requests answered | honest unanswered (10 s) | honest p50 ms | honest p99 ms | honest max ms |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            if r.defended { "after" } else { "before" },
            r.attack.map_or("none (baseline)", Attack::describe),
            r.sent as f64 / r.seconds,
            r.evaluated as f64 / r.seconds,
            r.throttled,
            r.dropped,
            r.honest.len(),
            r.unanswered,
            ms(pct(&r.honest, 0.5)),
            ms(pct(&r.honest, 0.99)),
            ms(r.honest.last().copied().unwrap_or_default()),
        );
    }
    s
}

/// Command-line settings.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds per row.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Rewrite the "## Password guessing" section of this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// The command to name in the report.
    #[arg(long, default_value = "scripts/bench-login.sh")]
    command: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Args {
        seconds,
        markdown,
        command,
    } = Args::parse();
    let broker = Mosquitto::start();
    let load_before = loadavg();
    let mut rows = Vec::new();
    for defended in [false, true] {
        for attack in [
            None,
            Some(Attack::OneDevice),
            Some(Attack::NewDeviceEachGuess),
            Some(Attack::UnknownAccounts),
        ] {
            let r = run(&broker, defended, attack, seconds).await?;
            eprintln!(
                "{} {:?}: sent {} evaluated {} throttled {} dropped {} honest {} unanswered {} p99 {} ms",
                if defended { "after" } else { "before" },
                attack,
                r.sent,
                r.evaluated,
                r.throttled,
                r.dropped,
                r.honest.len(),
                r.unanswered,
                ms(pct(&r.honest, 0.99))
            );
            rows.push(r);
        }
    }
    let body = format!(
        "{HEADING}\n\nCommand: `{command}` ({seconds} s per row). Machine: {}. Load average before: {load_before}.\n\n\
         The hub service in process over a SQLite file (WAL, `synchronous=FULL`) and a private \
         Mosquitto, argon2id at the production cost (19 MiB, 2 iterations). One honest phone asks for its balance in a loop, one request at a time (a request \
         unanswered after 10 s is counted and the next one sent), while one attacker publishes \
         wrong-password logins at {ATTACK_RATE} a second. \
         \"Guesses evaluated\" are the attacker's logins answered `bad_credentials`, i.e. \
         passwords the hub actually checked; \"before\" is the hub without the defences of \
         the account-takeover issue (`secret_workers = 0`, no throttle), which is how it was.\n\n{}",
        machine(),
        table(&rows)
    );
    print!("{body}");
    if let Some(path) = markdown {
        update_section(&path, HEADING, &body)?;
    }
    Ok(())
}
