//! `cargo demo`: the whole qrcash story on one machine with nothing but Rust installed.
//!
//! An embedded MQTT broker, the hub (SQLite file, its own key), an ATM agent with a
//! synthetic camera and the LCDM-2000 simulator on a pseudo-terminal, and a phone client,
//! all talking signed messages. Round one is a complete withdrawal; round two shows what a
//! fraudster meets: a forged code refused by the ATM offline, a confirmation from a phone
//! that is not at the ATM refused by the hub, and a second phone with the phished password
//! that claims to stand at the ATM, restricted and refused a transfer until the owner
//! answers its alert. Exits 0 only if every step happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use qrcash_agent::config::{CassetteConfig, OutboxSettings, Timing};
use qrcash_agent::{Agent, AgentConfig, AgentEvent, Screen};
use qrcash_hardware::camera::{SyntheticCamera, SyntheticScene};
use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser, LcdmModel};
use qrcash_hardware::dispenser::sim::{SimConfig, Simulator};
use qrcash_hub::admin::{self, NewAccount, NewAtm};
use qrcash_hub::config::HubConfig;
use qrcash_hub::identity::HashCost;
use qrcash_hub::service::HubService;
use qrcash_io::BrokerConfig;
use qrcash_io::KeyFile;
use qrcash_phone::{DeviceStore, PhoneClient, PhoneError, PhoneSettings, display, requests};
use qrcash_protocol::messages::{ReceiptStatus, RejectReason};
use qrcash_protocol::token::CodeToken;
use qrcash_protocol::{Amount, Clock, Currency, Position, PrivateKey, SystemClock, TxId};
use tokio::sync::broadcast;

/// Runs the qrcash demo: hub, ATM agent and phone on an embedded broker.
#[derive(Parser, Debug)]
#[command(name = "qrcash-demo", version)]
struct Args {
    /// Folder for the demo's databases, keys and QR image (default: a temporary folder that
    /// is removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Log the components' own tracing output too (e.g. `--log info`).
    #[arg(long)]
    log: Option<String>,
}

const ATM_ID: &str = "atm-shibuya-01";
const ACCOUNT: &str = "hanako";
const PASSWORD: &str = "correct horse battery";
const PIN: &str = "4321";
/// Shibuya Station East, where the demo ATM stands.
const ATM_AT: (f64, f64) = (35.6595, 139.7005);
const WAIT: Duration = Duration::from_secs(30);

struct Step(u32);

impl Step {
    fn next(&mut self, title: &str) {
        self.0 += 1;
        println!("\n\x1b[1m[{}] {title}\x1b[0m", self.0);
    }
}

fn yen(a: Amount) -> String {
    let digits = a.minor.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if a.currency == Currency::JPY {
        format!("¥{out}")
    } else {
        format!("{out} {}", a.currency)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_target(false)
            .init();
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "{} is not empty: the demo starts from scratch, give it an empty folder",
                    d.display()
                );
            }
            d.clone()
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary folder")?;
            temp.path().to_owned()
        }
    };
    match run(&dir).await {
        Ok(()) => {
            println!("\n\x1b[1;32mqrcash demo: every step happened.\x1b[0m");
            Ok(())
        }
        Err(e) => {
            println!("\n\x1b[1;31mqrcash demo FAILED: {e:#}\x1b[0m");
            std::process::exit(1);
        }
    }
}

async fn run(dir: &Path) -> Result<()> {
    println!(
        "qrcash demo: a cardless cash withdrawal, end to end (files in {})",
        dir.display()
    );
    let mut step = Step(0);
    let clock = SystemClock;

    // ---------------------------------------------------------------------------------
    step.next("Hub: embedded MQTT broker, signing key, database, an account and an ATM");
    let broker = qrcash_hub::embedded_broker::start(0).context("starting the embedded broker")?;
    let url = broker.url();
    let mut config = HubConfig {
        database: dir.join("hub.sqlite"),
        key_file: dir.join("hub-key.jwk"),
        ..HubConfig::default()
    };
    config.broker.url = url.clone();
    let hub_key = PrivateKey::generate();
    hub_key.save(&config.key_file)?;
    {
        let mut store = qrcash_hub::store::Store::open(&config.database)?;
        let now = clock.now();
        let cost = HashCost {
            memory_kib: config.auth.argon2_memory_kib,
            iterations: config.auth.argon2_iterations,
        };
        admin::create_account(
            &mut store,
            &NewAccount {
                id: ACCOUNT.into(),
                currency: Currency::JPY,
                password: PASSWORD.into(),
                pin: PIN.into(),
                opening_balance: 100_000,
            },
            cost,
            now,
        )?;
        admin::create_account(
            &mut store,
            &NewAccount {
                id: "taro".into(),
                currency: Currency::JPY,
                password: "taro's own password".into(),
                pin: "9876".into(),
                opening_balance: 0,
            },
            cost,
            now,
        )?;
        let atm_key = PrivateKey::generate();
        atm_key.save(&dir.join("atm-key.jwk"))?;
        admin::enroll_atm(
            &mut store,
            &NewAtm {
                id: ATM_ID.into(),
                public_key: atm_key.public().to_jwk(),
                name: "Shibuya Station East".into(),
                address: "2-24-1 Shibuya, Shibuya-ku, Tokyo".into(),
                position: Position::new(ATM_AT.0, ATM_AT.1, 0.0),
                denominations: vec![10_000, 1_000],
            },
            now,
        )?;
    }
    std::fs::write(
        dir.join("hub.pub.jwk"),
        serde_json::to_string(&hub_key.public().to_jwk())?,
    )?;
    println!("  broker   {url} (rumqttd, in-process)");
    println!(
        "  hub key  {} (0600 {})",
        hub_key.kid(),
        config.key_file.display()
    );
    println!("  account  {ACCOUNT}: opening balance ¥100,000, PIN set (argon2id)");
    println!("  ATM      {ATM_ID} \"Shibuya Station East\", cassettes ¥10,000 and ¥1,000");
    let hub = HubService::from_config(config.clone()).await?;
    ensure!(
        hub.wait_ready(WAIT).await,
        "the hub did not subscribe to its topics"
    );
    println!("  hub      serving");

    // ---------------------------------------------------------------------------------
    step.next("ATM agent: LCDM-2000 dispenser simulator on a pseudo-terminal, camera, journal");
    let sim = Simulator::spawn(SimConfig {
        note_interval: Duration::from_millis(40),
        ..SimConfig::lcdm2000(200, 200)
    })?;
    let dispenser = LcdmDispenser::open_checked(LcdmConfig {
        journal: Some(dir.join("dispenser-journal.json")),
        ..LcdmConfig::new(sim.port_path(), LcdmModel::Lcdm2000)
    })?;
    println!(
        "  dispenser serial line {} (9600 8N1, LCDM protocol)",
        sim.port_path()
    );
    let camera = SyntheticCamera::with_scene(
        1280,
        720,
        SyntheticScene {
            noise_sigma: 4.0,
            ..SyntheticScene::default()
        },
    );
    let agent_config = AgentConfig {
        atm_id: ATM_ID.into(),
        hub_id: "hub".into(),
        key_file: dir.join("atm-key.jwk"),
        hub_keys: vec![dir.join("hub.pub.jwk")],
        enrolment_file: None,
        database: dir.join("agent.sqlite"),
        currency: "JPY".into(),
        cassettes: vec![
            CassetteConfig {
                denomination: 10_000,
                notes: 200,
            },
            CassetteConfig {
                denomination: 1_000,
                notes: 200,
            },
        ],
        broker: BrokerConfig::plain(url.clone()),
        camera: None,
        dispenser: None,
        outbox: OutboxSettings::default(),
        timing: Timing::default(),
    };
    let agent = Agent::start(agent_config, Box::new(camera.clone()), Box::new(dispenser)).await?;
    let mut events = agent.subscribe();
    wait_for(&mut events, "the agent's broker link", |e| {
        matches!(e, AgentEvent::Link { up: true })
    })
    .await?;
    println!("  camera   synthetic 1280x720 (a real ATM uses Video4Linux)");
    println!("  agent    online; screen: {:?}", agent.screen());

    // ---------------------------------------------------------------------------------
    step.next("Phone: Hanako logs in with her device key, near the ATM");
    let at_atm = Position::new(ATM_AT.0 + 0.0001, ATM_AT.1, 12.0);
    let phone_store = DeviceStore::open(dir.join("phone"))?;
    let mut phone = PhoneClient::connect(
        PhoneSettings::new("hanako-phone", BrokerConfig::plain(url.clone())),
        phone_store.device_key()?,
        hub_key.public().clone(),
        phone_store,
        Arc::new(clock),
    )
    .await?;
    let login = phone.login(ACCOUNT, PASSWORD, Some(at_atm), WAIT).await?;
    println!(
        "  logged in as {} on {} (device key {}), new device: {}, restricted: {}",
        login.account,
        login.device_id,
        phone.public_key().kid(),
        login.new_device,
        login.restriction.is_some()
    );

    // ---------------------------------------------------------------------------------
    step.next("Phone: register a ¥30,000 withdrawal; the hub issues a one-time QR code");
    let amount = Amount::new(30_000, Currency::JPY);
    let code = phone.register_withdrawal(ACCOUNT, amount, WAIT).await?;
    let png = dir.join("withdrawal-qr.png");
    display::save_qr_png(&code.token, &png)?;
    println!("{}", display::qr_terminal(&code.token)?);
    println!("  tx {}  amount {}", code.tx_id, yen(code.amount));
    println!(
        "  code {}… ({} characters, hub-signed), expires in {} s; PNG saved to {}",
        &code.token[..16],
        code.token.len(),
        code.expires_at.saturating_sub(clock.now()),
        png.display()
    );

    // ---------------------------------------------------------------------------------
    step.next(
        "ATM: the customer shows the code; the camera reads it, the agent verifies it offline",
    );
    camera.show(&code.token)?;
    wait_for(
        &mut events,
        "the ATM's 'confirm on your phone' screen",
        |e| matches!(e, AgentEvent::Screen(Screen::ConfirmOnPhone { .. })),
    )
    .await?;
    camera.clear();
    println!("  ATM screen: {:?}", agent.screen());

    // ---------------------------------------------------------------------------------
    step.next("Phone push: what, where, until when, a fraud warning, and the authentication asked");
    let request = phone.await_confirm_request(Some(code.tx_id), WAIT).await?;
    for line in display::confirm_screen(&request, clock.now()).lines() {
        println!("  │ {line}");
    }
    ensure!(
        !request.warnings.is_empty(),
        "the push carried no fraud warning"
    );

    // ---------------------------------------------------------------------------------
    step.next("Phone: confirm with the device key, PIN and position (dynamic linking)");
    let delivered_before = sim.counters().delivered;
    let jti = phone
        .confirm(
            &request,
            requests::evidence(Some(PIN), None, clock.now()),
            Some(at_atm),
        )
        .await?;
    println!(
        "  signed over tx {}, ATM {}, {}, challenge {}; position {:.0} m from the ATM",
        request.tx_id,
        request.atm.atm_id,
        yen(request.amount),
        request.challenge,
        at_atm.distance_m(&request.atm.position)
    );

    // ---------------------------------------------------------------------------------
    step.next("Hub → ATM: signed DispenseOrder; the agent journals it, then dispenses over serial");
    let report = wait_for_map(&mut events, "the dispense report", |e| match e {
        AgentEvent::Dispensed(r) => Some(r.clone()),
        _ => None,
    })
    .await?;
    for n in &report.notes {
        println!(
            "  ¥{:>6} notes: requested {}, picked {}, left the machine {}, rejected {}",
            n.denomination, n.requested, n.picked, n.exited, n.rejected
        );
    }
    println!(
        "  outcome {:?}, dispensed {}",
        report.outcome,
        yen(report.dispensed)
    );
    let delivered = sim.counters().delivered - delivered_before;
    println!("  simulator: {delivered} notes physically delivered");
    ensure!(
        report.dispensed == amount,
        "dispensed {} instead of {}",
        yen(report.dispensed),
        yen(amount)
    );

    // ---------------------------------------------------------------------------------
    step.next("Receipt on the phone; the ATM's report is acknowledged and leaves its outbox");
    let receipt = phone
        .await_receipt(&code.tx_id.to_string(), Some(&jti), WAIT)
        .await?;
    println!("  {}", display::receipt_line(&receipt));
    ensure!(
        receipt.status == ReceiptStatus::Completed,
        "receipt says {:?}",
        receipt.status
    );
    ensure!(
        receipt.balance == Amount::new(70_000, Currency::JPY),
        "balance {}",
        yen(receipt.balance)
    );
    wait_for(
        &mut events,
        "the hub's Ack of the report",
        |e| matches!(e, AgentEvent::Delivered { kind, .. } if kind == "DispenseReport"),
    )
    .await?;
    println!("  agent outbox: DispenseReport acknowledged by the hub");

    // ---------------------------------------------------------------------------------
    step.next("Ledger: double entry, every posting balanced");
    {
        let store = qrcash_hub::store::Store::open(&dir.join("hub.sqlite"))?;
        let report = admin::ledger_check(&store)?;
        println!(
            "  {} postings over {} ledger accounts; totals {:?}; problems: {}",
            report.postings,
            report.accounts,
            report.totals,
            report.problems.len()
        );
        ensure!(report.is_ok(), "ledger check failed: {:?}", report.problems);
    }
    let balance = phone.balance(ACCOUNT, 5, WAIT).await?;
    for line in display::balance_text(&balance).lines() {
        println!("  │ {line}");
    }

    // ---------------------------------------------------------------------------------
    println!("\n\x1b[1m── Round two: what a fraudster meets ──\x1b[0m");
    step.next("A forged code (signed by a key that is not the hub's) shown to the ATM");
    let forged = CodeToken::issue(&PrivateKey::generate(), TxId::random(), clock.now() + 600);
    camera.show(&forged)?;
    let refused = wait_for_map(
        &mut events,
        "the ATM refusing the forged code",
        |e| match e {
            AgentEvent::Screen(Screen::CodeRefused { reason }) => Some(reason.clone()),
            _ => None,
        },
    )
    .await?;
    camera.clear();
    println!("  ATM screen: code refused ({refused}) — decided offline, nothing sent to the hub");

    step.next("A phone 25 km away (Yokohama) tries to confirm a withdrawal at this ATM");
    let code = phone
        .register_withdrawal(ACCOUNT, Amount::new(20_000, Currency::JPY), WAIT)
        .await?;
    camera.show(&code.token)?;
    let request = phone.await_confirm_request(Some(code.tx_id), WAIT).await?;
    camera.clear();
    let far_away = Position::new(35.4437, 139.6380, 15.0); // Yokohama
    let before = sim.counters().delivered;
    match phone
        .confirm(
            &request,
            requests::evidence(Some(PIN), None, clock.now()),
            Some(far_away),
        )
        .await
    {
        Ok(jti) => match phone.reply_to(&jti, WAIT).await {
            Err(PhoneError::Rejected { reason, message }) => {
                println!("  hub refused: {message}");
                ensure!(
                    matches!(reason, RejectReason::TooFarFromAtm { .. }),
                    "refused for another reason: {reason:?}"
                );
            }
            other => bail!("the far-away confirmation was not refused: {other:?}"),
        },
        Err(PhoneError::Rejected { reason, message }) => {
            println!("  hub refused: {message}");
            ensure!(
                matches!(reason, RejectReason::TooFarFromAtm { .. }),
                "{reason:?}"
            );
        }
        Err(e) => return Err(e.into()),
    }
    phone.decline(request.tx_id, false).await?;
    wait_for(&mut events, "the ATM cancelling the session", |e| {
        matches!(e, AgentEvent::Screen(Screen::Cancelled { .. }))
    })
    .await?;
    println!("  the customer declines; ATM screen: {:?}", agent.screen());
    ensure!(
        sim.counters().delivered == before,
        "notes left the machine without a valid confirmation"
    );
    let balance = phone.balance(ACCOUNT, 0, WAIT).await?;
    println!(
        "  no cash, nothing held: available {}, held {}",
        yen(balance.available),
        yen(balance.held)
    );
    ensure!(
        balance.held.minor == 0 && balance.available.minor == 70_000,
        "the refused withdrawal moved money"
    );

    step.next("A second phone with Hanako's phished password logs in, claiming to be at the ATM");
    let mut fraudster = PhoneClient::connect(
        PhoneSettings::new("unknown-phone", BrokerConfig::plain(url.clone())),
        PrivateKey::generate(),
        hub_key.public().clone(),
        DeviceStore::in_memory(),
        Arc::new(clock),
    )
    .await?;
    let login = fraudster
        .login(ACCOUNT, PASSWORD, Some(at_atm), WAIT)
        .await?;
    let Some(restriction) = login.restriction else {
        bail!("a phone claiming the owner's position was not restricted");
    };
    let hours = restriction
        .until
        .map_or(0, |until| until.saturating_sub(clock.now()).div_ceil(3_600));
    println!(
        "  the hub sees a new device: restricted ({:?}) for {hours} h — a reported position \
         is a claim, not evidence",
        restriction.reason
    );
    match fraudster
        .transfer("taro", Amount::new(50_000, Currency::JPY), None, WAIT)
        .await
    {
        Err(PhoneError::Rejected {
            reason: RejectReason::Restricted { .. },
            message,
        }) => println!("  its transfer of ¥50,000 to taro: hub refused a transfer ({message})"),
        other => bail!("the new device's transfer was not refused as restricted: {other:?}"),
    }
    let alert = phone.await_alert(WAIT).await?;
    println!(
        "  Hanako's phone: \"{}\" logged in to your account — was this you?",
        alert.device_name
    );
    let answered = phone.answer_alert(&alert.alert_id, true, WAIT).await?;
    println!(
        "  she answers \"not me\": {}",
        display::alert_answered_line(&answered)
    );
    let balance = phone.balance(ACCOUNT, 0, WAIT).await?;
    ensure!(
        balance.available.minor == 70_000,
        "the fraudster's attempt moved money"
    );
    println!("  balance untouched: available {}", yen(balance.available));
    fraudster.shutdown().await;

    phone.shutdown().await;
    agent.shutdown().await;
    hub.shutdown().await;
    Ok(())
}

async fn wait_for(
    events: &mut broadcast::Receiver<AgentEvent>,
    what: &str,
    mut pred: impl FnMut(&AgentEvent) -> bool,
) -> Result<()> {
    wait_for_map(events, what, |e| pred(e).then_some(())).await
}

async fn wait_for_map<T>(
    events: &mut broadcast::Receiver<AgentEvent>,
    what: &str,
    mut pick: impl FnMut(&AgentEvent) -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) => {
                if let Some(t) = pick(&e) {
                    return Ok(t);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                bail!("the agent stopped before {what}")
            }
            Err(_) => bail!("no {what} within {} s", WAIT.as_secs()),
        }
    }
}
