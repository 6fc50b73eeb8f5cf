//! `qrcash-phone`: the reference phone client on the command line.
//!
//! State lives in one directory (`--dir`, default `./phone-state`): `phone.toml`, the 0600
//! device key, the `seq` counter, the hub's replay window, the logged-in account and the last
//! confirmation request. Run `init` once, then `login`, then e.g. `withdraw 10000`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use qrcash_io::BrokerConfig;
use qrcash_phone::display;
use qrcash_phone::requests;
use qrcash_phone::{DeviceStore, PhoneClient, PhoneConfig};
use qrcash_protocol::messages::{BiometricMethod, ConfirmRequest};
use qrcash_protocol::{Amount, Clock, Currency, Position, SystemClock};
use serde::{Deserialize, Serialize};

const SESSION_FILE: &str = "session.json";
const CONFIRM_FILE: &str = "confirm-request.json";

#[derive(Parser)]
#[command(
    name = "qrcash-phone",
    version,
    about = "qrcash reference phone client"
)]
struct Cli {
    /// State directory (config, device key, counters).
    #[arg(
        long,
        env = "QRCASH_PHONE_DIR",
        default_value = "phone-state",
        global = true
    )]
    dir: PathBuf,
    /// Currency of amounts given on the command line.
    #[arg(long, default_value = "JPY", global = true)]
    currency: String,
    /// Seconds to wait for the hub's answer (default 30; `confirm` waits 120 for the ATM to
    /// pay out unless this is given).
    #[arg(long, global = true)]
    timeout: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Copy)]
struct PositionArgs {
    /// Latitude of the phone, degrees.
    #[arg(long, requires = "lon", allow_negative_numbers = true)]
    lat: Option<f64>,
    /// Longitude of the phone, degrees.
    #[arg(long, requires = "lat", allow_negative_numbers = true)]
    lon: Option<f64>,
    /// Accuracy radius of the position, metres.
    #[arg(long, default_value_t = 10.0)]
    accuracy_m: f64,
}

impl PositionArgs {
    fn position(&self) -> Result<Option<Position>> {
        match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => {
                let p = Position::new(lat, lon, self.accuracy_m);
                p.validate().map_err(anyhow::Error::msg)?;
                Ok(Some(p))
            }
            _ => Ok(None),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Biometric {
    Face,
    Fingerprint,
}

#[derive(Subcommand)]
enum Command {
    /// Create the state directory: configuration and a new device key.
    Init {
        /// This device's id.
        #[arg(long)]
        device_id: String,
        /// Human name of the device.
        #[arg(long)]
        name: Option<String>,
        /// The hub's public key (JWK file).
        #[arg(long)]
        hub_key: PathBuf,
        /// The hub's sender id.
        #[arg(long, default_value = "hub")]
        hub_id: String,
        /// Broker URL (mqtt://host:port or mqtts://host:port).
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Another node of a clustered broker, tried after `--broker` when the one in use
        /// fails (repeat it, in order of preference).
        #[arg(long = "failover-broker")]
        failover_brokers: Vec<String>,
        /// CA of the broker (mqtts).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Client certificate (mqtts with client authentication).
        #[arg(long)]
        cert_file: Option<PathBuf>,
        /// Client certificate key.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Log in (enrols this device's key on first use).
    Login {
        /// The account.
        #[arg(long)]
        account: String,
        /// The password (prefer the environment variable).
        #[arg(long, env = "QRCASH_PASSWORD", hide_env_values = true)]
        password: String,
        #[command(flatten)]
        position: PositionArgs,
    },
    /// Register a cash withdrawal: show the QR code, then wait for the ATM's confirmation
    /// request.
    Withdraw {
        /// Amount in minor units (yen).
        amount: u64,
        /// Where to save the QR code as PNG.
        #[arg(long, default_value = "code.png")]
        png: PathBuf,
        /// Seconds to wait for the confirmation request (0: do not wait).
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Wait for a confirmation request (after `withdraw --wait 0`).
    AwaitConfirm {
        /// Seconds to wait.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Approve the last confirmation request and wait for the receipt.
    Confirm {
        /// The account PIN.
        #[arg(long, env = "QRCASH_PIN", hide_env_values = true)]
        pin: Option<String>,
        /// A biometric check passed on this device.
        #[arg(long, value_enum)]
        biometric: Option<Biometric>,
        #[command(flatten)]
        position: PositionArgs,
    },
    /// Decline the last confirmation request.
    Decline,
    /// Decline the last confirmation request as "this was not me" (freezes the account).
    NotMe,
    /// Send money to another account.
    Transfer {
        /// The receiving account.
        to: String,
        /// Amount in minor units.
        amount: u64,
        /// Note for the receiver.
        #[arg(long)]
        memo: Option<String>,
    },
    /// Pay a merchant.
    Pay {
        /// The merchant id.
        merchant: String,
        /// Amount in minor units.
        amount: u64,
    },
    /// Pay out to the registered bank account.
    BankWithdraw {
        /// The registered bank account id.
        bank_account: String,
        /// Amount in minor units.
        amount: u64,
    },
    /// Add money to the account from its linked funding account.
    TopUp {
        /// Amount in minor units.
        amount: u64,
        /// The funding account (a bank account registered at the hub).
        #[arg(long)]
        from: String,
    },
    /// Show balance and recent history.
    Balance {
        /// History entries to show.
        #[arg(long, default_value_t = 10)]
        history: u32,
    },
    /// Answer a new-device alert.
    AnswerAlert {
        /// The alert id.
        alert_id: String,
        /// "That was not me": revoke the device and freeze the account.
        #[arg(long)]
        not_me: bool,
    },
    /// Change the account's password (every other device is signed out).
    ChangePassword {
        /// The password now.
        #[arg(long, env = "QRCASH_PASSWORD", hide_env_values = true)]
        current: String,
        /// The new password (at least 8 characters).
        #[arg(long, env = "QRCASH_NEW_PASSWORD", hide_env_values = true)]
        new: String,
    },
    /// Sign out every other device of the account.
    SignOutOthers,
    /// Print every push that arrives (JSON lines) until the timeout.
    Listen,
}

/// The logged-in account, saved by `login`.
#[derive(Serialize, Deserialize)]
struct Session {
    account: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    run(cli).await
}

/// Holds the device's state directory for the whole command (released when the process
/// ends, however it ends). Two commands of one device at once would connect with the same
/// broker client id and knock each other off in a loop, and race on `seq`: the second one
/// says so and stops instead.
fn lock_state(dir: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another qrcash-phone command is running for the device in {} (it holds {}); \
             wait for it to end or stop it: two at once would share the broker client id and \
             knock each other off",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// `path` made absolute against the current directory (as typed when that fails).
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn run(cli: Cli) -> Result<()> {
    let currency = Currency::new(&cli.currency).map_err(anyhow::Error::msg)?;
    let amount = |minor: u64| Amount::new(minor, currency);
    let timeout = Duration::from_secs(cli.timeout.unwrap_or(30));
    if let Command::Init {
        device_id,
        name,
        hub_key,
        hub_id,
        broker,
        failover_brokers,
        ca_file,
        cert_file,
        key_file,
    } = &cli.command
    {
        let store = DeviceStore::open(&cli.dir)?;
        let _lock = lock_state(&cli.dir)?;
        let key = store.device_key()?;
        let cfg = PhoneConfig {
            device_id: device_id.clone(),
            name: name.clone().unwrap_or_else(|| device_id.clone()),
            hub_id: hub_id.clone(),
            hub_key: absolute(hub_key),
            // Stored absolute: later commands may run from another directory.
            broker: BrokerConfig {
                url: broker.clone(),
                failover_urls: failover_brokers.clone(),
                ca_file: ca_file.as_deref().map(absolute),
                cert_file: cert_file.as_deref().map(absolute),
                key_file: key_file.as_deref().map(absolute),
                ..BrokerConfig::default()
            },
        };
        qrcash_protocol::topics::validate_id(device_id).map_err(anyhow::Error::msg)?;
        cfg.load_hub_key()
            .with_context(|| format!("reading the hub key {}", hub_key.display()))?;
        cfg.save(&cli.dir)?;
        println!(
            "device {} initialised in {}",
            cfg.device_id,
            cli.dir.display()
        );
        println!("device key id {}", key.kid());
        return Ok(());
    }

    let cfg = PhoneConfig::load(&cli.dir)
        .with_context(|| format!("run `qrcash-phone --dir {} init` first", cli.dir.display()))?;
    let store = DeviceStore::open(&cli.dir)?;
    let _lock = lock_state(&cli.dir)?;
    let key = store.device_key()?;
    let hub_key = cfg.load_hub_key()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut phone =
        PhoneClient::connect(cfg.settings(), key, hub_key, store.clone(), clock.clone())
            .await
            .with_context(|| format!("connecting to {}", cfg.broker.url))?;
    let account = || -> Result<String> {
        store
            .load_json::<Session>(SESSION_FILE)?
            .map(|s| s.account)
            .context("not logged in: run `qrcash-phone login --account ...` first")
    };

    match cli.command {
        Command::Init { .. } => unreachable!("handled above"),
        Command::Login {
            account,
            password,
            position,
        } => {
            let r = phone
                .login(&account, &password, position.position()?, timeout)
                .await?;
            store.save_json(
                SESSION_FILE,
                &Session {
                    account: r.account.clone(),
                },
            )?;
            println!("logged in to {} as device {}", r.account, r.device_id);
            if r.new_device {
                println!("this is a new device for the account");
            }
            if let Some(restriction) = r.restriction {
                println!(
                    "money out is restricted ({:?}) until {}",
                    restriction.reason,
                    restriction
                        .until
                        .map_or("an operator clears it".to_owned(), |u| u.to_string())
                );
            }
        }
        Command::Withdraw {
            amount: minor,
            png,
            wait,
        } => {
            let code = phone
                .register_withdrawal(&account()?, amount(minor), timeout)
                .await?;
            println!("{}", display::qr_terminal(&code.token)?);
            display::save_qr_png(&code.token, &png)?;
            println!(
                "withdrawal {} of {} registered; show this code at an ATM before {} (saved as {})",
                code.tx_id,
                code.amount,
                code.expires_at,
                png.display()
            );
            println!("token: {}", code.token);
            if wait > 0 {
                await_confirm(
                    &mut phone,
                    &store,
                    clock.as_ref(),
                    Some(code.tx_id),
                    Duration::from_secs(wait),
                )
                .await?;
            }
        }
        Command::AwaitConfirm { wait } => {
            await_confirm(
                &mut phone,
                &store,
                clock.as_ref(),
                None,
                Duration::from_secs(wait),
            )
            .await?;
        }
        Command::Confirm {
            pin,
            biometric,
            position,
        } => {
            let req = pending(&store)?;
            let bio = biometric.map(|b| match b {
                Biometric::Face => BiometricMethod::Face,
                Biometric::Fingerprint => BiometricMethod::Fingerprint,
            });
            let evidence = requests::evidence(pin.as_deref(), bio, clock.now());
            let position = position.position()?;
            let missing = requests::missing_auth(&req, &evidence, position.as_ref());
            if !missing.is_empty() {
                bail!("this confirmation needs {}", missing.join(" and "));
            }
            let jti = phone.confirm(&req, evidence, position).await?;
            println!("confirmed {}; waiting for the ATM to pay out", req.tx_id);
            let wait = Duration::from_secs(cli.timeout.unwrap_or(120));
            let receipt = match phone
                .await_receipt(&req.tx_id.to_string(), Some(&jti), wait)
                .await
            {
                Ok(r) => r,
                Err(qrcash_phone::PhoneError::Timeout { .. }) => {
                    // Say what is known instead of blaming the broker: the confirmation went
                    // out; what the account shows now tells whether money is still held.
                    let now = match phone.balance(&account()?, 0, timeout).await {
                        Ok(b) => format!(
                            "the hub answers: available {}, held for withdrawals in progress or in doubt {}",
                            b.available, b.held
                        ),
                        Err(e) => format!("the hub does not answer a balance query either ({e})"),
                    };
                    bail!(
                        "no receipt for {} within {}s after the confirmation was sent; {now}. \
                         The ATM may still be paying out, or its outcome is in doubt and an \
                         operator settles it later (the receipt follows then): \
                         `qrcash-phone balance --history 5` shows what was paid",
                        req.tx_id,
                        wait.as_secs()
                    );
                }
                Err(e) => return Err(e.into()),
            };
            store.remove(CONFIRM_FILE)?;
            println!("{}", display::receipt_line(&receipt));
        }
        Command::Decline | Command::NotMe => {
            let not_me = matches!(cli.command, Command::NotMe);
            let req = pending(&store)?;
            let jti = phone.decline(req.tx_id, not_me).await?;
            store.remove(CONFIRM_FILE)?;
            println!(
                "declined {}{}",
                req.tx_id,
                if not_me { " (not me)" } else { "" }
            );
            match phone
                .await_receipt(&req.tx_id.to_string(), Some(&jti), timeout)
                .await
            {
                Ok(r) => println!("{}", display::receipt_line(&r)),
                Err(qrcash_phone::PhoneError::Timeout { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Command::Transfer {
            to,
            amount: minor,
            memo,
        } => {
            let r = phone.transfer(&to, amount(minor), memo, timeout).await?;
            println!("{}", display::receipt_line(&r));
        }
        Command::Pay {
            merchant,
            amount: minor,
        } => {
            let r = phone.pay(&merchant, amount(minor), timeout).await?;
            println!("{}", display::receipt_line(&r));
        }
        Command::BankWithdraw {
            bank_account,
            amount: minor,
        } => {
            let r = phone
                .bank_withdraw(&bank_account, amount(minor), timeout)
                .await?;
            println!("{}", display::receipt_line(&r));
        }
        Command::TopUp {
            amount: minor,
            from,
        } => {
            let r = phone.top_up(amount(minor), &from, timeout).await?;
            println!("{}", display::receipt_line(&r));
        }
        Command::Balance { history } => {
            let b = phone.balance(&account()?, history, timeout).await?;
            print!("{}", display::balance_text(&b));
        }
        Command::AnswerAlert { alert_id, not_me } => {
            let a = phone.answer_alert(&alert_id, not_me, timeout).await?;
            println!("{}", display::alert_answered_line(&a));
        }
        Command::ChangePassword { current, new } => {
            let s = phone.change_password(&current, &new, timeout).await?;
            println!("password changed; signed out: {}", s.signed_out.join(", "));
        }
        Command::SignOutOthers => {
            let s = phone.sign_out_other_devices(timeout).await?;
            println!("signed out: {}", s.signed_out.join(", "));
        }
        Command::Listen => loop {
            match phone.next_push("push", timeout, |_| true).await {
                Ok(c) => println!("{}", serde_json::to_string(&c)?),
                Err(qrcash_phone::PhoneError::Timeout { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        },
    }
    phone.shutdown().await;
    Ok(())
}

/// Waits for the confirmation request of `tx` (of any withdrawal without one: a copy the hub
/// sent again for an earlier withdrawal could then be taken).
async fn await_confirm(
    phone: &mut PhoneClient,
    store: &DeviceStore,
    clock: &dyn Clock,
    tx: Option<qrcash_protocol::TxId>,
    wait: Duration,
) -> Result<()> {
    println!("waiting for the ATM to read the code...");
    let req = phone.await_confirm_request(tx, wait).await?;
    store.save_json(CONFIRM_FILE, &req)?;
    print!("{}", display::confirm_screen(&req, clock.now()));
    println!("answer with `qrcash-phone confirm`, `decline` or `not-me`");
    Ok(())
}

fn pending(store: &DeviceStore) -> Result<ConfirmRequest> {
    store
        .load_json::<ConfirmRequest>(CONFIRM_FILE)?
        .context("no confirmation request is pending: run `qrcash-phone await-confirm`")
}
