//! `qrcash-hub`: the operator's command line. `init` sets up a hub directory, `serve` runs
//! the service, the other commands inspect and administer the database (they may run while
//! `serve` runs: SQLite WAL lets them in between the writer's transactions).

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qrcash_hub::admin::{self, NewAccount, NewAtm, NewBankAccount, NewMerchant, TxFilter};
use qrcash_hub::config::{DEFAULT_CONFIG_TOML, HubConfig};
use qrcash_hub::identity::HashCost;
use qrcash_hub::restriction;
use qrcash_hub::service::HubService;
use qrcash_hub::store::Store;
use qrcash_hub::withdrawal::Phase;
use qrcash_io::KeyFile;
use qrcash_protocol::{Clock as _, Currency, Position, PrivateKey, PublicKey, SystemClock, TxId};

#[derive(Parser)]
#[command(
    name = "qrcash-hub",
    version,
    about = "qrcash hub: cardless withdrawals over MQTT"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "hub.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the manual page (roff) to standard output (the package installs it).
    #[command(hide = true)]
    Man,
    /// Create the configuration file (with comments), the hub key (0600) and the database.
    Init {
        /// Overwrite an existing configuration file.
        #[arg(long, conflicts_with = "keep_config")]
        force: bool,
        /// Use the configuration file as it is (the package's `/etc/qrcash/hub.toml`) and
        /// make only what it names: the key (unless it exists) and the database.
        #[arg(long)]
        keep_config: bool,
        /// Never make a key: the configured one must exist (an upgrade; a new key would
        /// silently cut off every ATM and phone that trusts the old one).
        #[arg(long)]
        existing_key: bool,
    },
    /// Bring the configured database's schema up to date (every command does so on
    /// opening it; this does only that) and print its version.
    Migrate,
    /// Run the service until SIGINT or SIGTERM.
    Serve {
        /// Start an in-process MQTT broker on 127.0.0.1 (`[broker] embedded_port`) and use it.
        #[arg(long)]
        embedded_broker: bool,
    },
    /// Customer accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Phone devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// ATMs.
    #[command(subcommand)]
    Atm(AtmCmd),
    /// Merchants.
    #[command(subcommand)]
    Merchant(MerchantCmd),
    /// Withdrawals.
    #[command(subcommand)]
    Tx(TxCmd),
    /// The ledger.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// New-device restrictions.
    #[command(subcommand)]
    Restriction(RestrictionCmd),
    /// The device CA the broker trusts: certificates for the broker, the hub, ATMs, phones
    /// and the edge bridge, revocation and the CRL (`docs/deployment.md` §3).
    Pki {
        /// The CA's folder (0700: its key is 0600 inside).
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[command(subcommand)]
        command: PkiCmd,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create the CA (refuses to overwrite one).
    Init {
        /// Its name (CN).
        #[arg(long, default_value = "qrcash device CA")]
        name: String,
        /// Days it is valid.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a certificate: `NAME.pem`, and `NAME.key` (0600) unless a CSR brings its own key.
    Issue {
        /// `broker` (server) or `client` (CN = the MQTT identity: hub, an ATM id, a phone
        /// device id, bridge-edge).
        #[arg(value_enum)]
        kind: qrcash_hub::pki::Kind,
        /// The CN.
        name: String,
        /// For a broker: the DNS names and IP addresses clients dial (comma-separated).
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// Days it is valid (1 to 825; renew before it expires: issue again, then revoke
        /// the old one).
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// Sign this CSR (PEM) instead of making a key: the device keeps its own.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Revoke by serial, or every certificate of a name; then writes the CRL (30 days).
    Revoke {
        /// A serial (hex) or a name.
        which: String,
        /// Days the new CRL is valid.
        #[arg(long, default_value_t = 30)]
        crl_days: u64,
    },
    /// Write the CRL again (before the last one expires, or the broker refuses everyone).
    Crl {
        /// Days it is valid (1 to 365).
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// What the CA issued: serial, kind, name, days left, revoked.
    List,
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account. The password and PIN are read from QRCASH_PASSWORD and QRCASH_PIN,
    /// or else as two lines from standard input (never from the command line).
    Create {
        /// Account id.
        id: String,
        /// ISO 4217 currency.
        #[arg(long, default_value = "JPY")]
        currency: String,
        /// Opening balance in minor units (booked as a top-up).
        #[arg(long, default_value_t = 0)]
        opening: u64,
    },
    /// Show balances, freeze and devices.
    Show {
        /// Account id.
        id: String,
    },
    /// Set a new password (read like `create`'s: QRCASH_PASSWORD or a line of stdin); every
    /// device of the account is signed out and must log in with the new one.
    Password {
        /// Account id.
        id: String,
    },
    /// Sign every device of the account out (they must log in again).
    SignOut {
        /// Account id.
        id: String,
    },
    /// Clear a "not me" freeze after checking with the customer.
    Unfreeze {
        /// Account id.
        id: String,
    },
    /// Register a bank account for payouts.
    BankAdd {
        /// The customer account.
        account: String,
        /// Id of the bank account (quoted in BankWithdrawal).
        #[arg(long)]
        id: String,
        /// Bank name.
        #[arg(long)]
        bank: String,
        /// Account number.
        #[arg(long)]
        number: String,
        /// Holder name.
        #[arg(long)]
        holder: String,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// List devices with their status and restriction.
    List {
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a device.
    Revoke {
        /// Device id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AtmCmd {
    /// Enrol an ATM (or update it).
    Enroll {
        /// ATM id.
        id: String,
        /// Its public key (JWK file from the agent).
        #[arg(long)]
        key_file: PathBuf,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Street address.
        #[arg(long)]
        address: String,
        /// Latitude.
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        /// Longitude.
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        /// Cassette denominations, comma-separated minor units.
        #[arg(long, value_delimiter = ',', default_value = "10000,5000,1000")]
        denominations: Vec<u64>,
    },
    /// Reconcile the ATM's reported cassette counts with the notes its dispense reports say
    /// left each cassette: one line per change of counts; exits 1 when notes are unaccounted.
    Reconcile {
        /// ATM id.
        id: String,
    },
    /// Issue a one-time enrolment code for an ATM, shown as text and as a QR code for the
    /// board's camera (`qrcash-agent enrol`). An ATM not enrolled yet needs its place and
    /// cassettes; an enrolled one gets the key of the board that uses the code.
    EnrolCode {
        /// ATM id.
        id: String,
        /// Display name (new ATM).
        #[arg(long)]
        name: Option<String>,
        /// Street address (new ATM).
        #[arg(long)]
        address: Option<String>,
        /// Latitude (new ATM).
        #[arg(long, allow_hyphen_values = true)]
        lat: Option<f64>,
        /// Longitude (new ATM).
        #[arg(long, allow_hyphen_values = true)]
        lon: Option<f64>,
        /// Cassette denominations, comma-separated minor units (new ATM).
        #[arg(long, value_delimiter = ',')]
        denominations: Option<Vec<u64>>,
        /// Hours the code stays valid (1 to 720).
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
        valid_hours: u64,
        /// Also write the QR code as a PNG image.
        #[arg(long)]
        png: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MerchantCmd {
    /// Register a merchant.
    Add {
        /// Merchant id.
        id: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// Latitude.
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        /// Longitude.
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        /// Currency.
        #[arg(long, default_value = "JPY")]
        currency: String,
    },
}

#[derive(Subcommand)]
enum TxCmd {
    /// List withdrawals.
    List {
        /// Only this phase (registered, presented, ordered, dispensed, partial, failed,
        /// in_doubt, expired, declined, cancelled).
        #[arg(long)]
        phase: Option<String>,
        /// Only those flagged for reconciliation.
        #[arg(long)]
        flagged: bool,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// At most this many (newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one withdrawal: its phase and amounts, the notes planned and counted, the bounds
    /// of what left the machine and where each figure came from, its resolution and
    /// corrections.
    Show {
        /// Transaction id.
        tx: String,
    },
    /// Clear the reconciliation flag of a settled withdrawal after looking into it.
    ClearFlag {
        /// Transaction id.
        tx: String,
        /// What was found (kept in the record and the audit log).
        #[arg(long)]
        note: String,
    },
    /// Settle an in-doubt (or long unreported) withdrawal with the counted amount. Refused
    /// while the order may still be executed, outside the evidence's bounds, or when the
    /// amount cannot be paid in the order's notes; pushes a receipt to the customer.
    Resolve {
        /// Transaction id.
        tx: String,
        /// Minor units the customer received.
        #[arg(long)]
        dispensed: u64,
        /// Who settles it (kept with the resolution and in the audit log).
        #[arg(long)]
        operator: String,
        /// Why this amount: what was counted, who was asked.
        #[arg(long)]
        reason: String,
    },
    /// Corrections proposed when a later report contradicts a settlement.
    #[command(subcommand)]
    Correction(CorrectionCmd),
}

#[derive(Subcommand)]
enum CorrectionCmd {
    /// List corrections (waiting ones unless --all).
    List {
        /// Include decided ones.
        #[arg(long)]
        all: bool,
    },
    /// Approve a correction: books the difference and pushes a corrected receipt.
    Approve {
        /// Correction number.
        id: i64,
        /// Who approves.
        #[arg(long)]
        operator: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Reject a correction: the books stay, the withdrawal stays flagged.
    Reject {
        /// Correction number.
        id: i64,
        /// Who rejects.
        #[arg(long)]
        operator: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Recompute the books; exits with status 1 if anything is wrong.
    Check,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The latest entries.
    Tail {
        /// How many.
        #[arg(short, default_value_t = 20)]
        n: usize,
    },
}

#[derive(Subcommand)]
enum RestrictionCmd {
    /// Devices restricted now, and why.
    List,
    /// Lift a device's restriction before its time.
    Lift {
        /// Device id.
        device: String,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; none in the journal or a maintainer script.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(cli) {
        eprintln!("qrcash-hub: {e:#}");
        std::process::exit(2);
    }
}

fn load(path: &Path) -> Result<HubConfig> {
    HubConfig::load(path).with_context(|| {
        format!(
            "cannot use config {} (create one with `qrcash-hub init`)",
            path.display()
        )
    })
}

fn open(config: &HubConfig) -> Result<Store> {
    config
        .open_store()
        .with_context(|| format!("cannot open database {}", config.database_name()))
}

fn pki(dir: &Path, command: PkiCmd) -> Result<()> {
    use qrcash_hub::pki::Ca;
    let now = now();
    match command {
        PkiCmd::Init { name, days } => {
            let ca = Ca::init(dir, &name, days, now)?;
            println!(
                "CA {name:?} created in {}: give {} to the broker (cafile) and to every client (ca_file); keep ca.key offline",
                dir.display(),
                ca.cert_file().display()
            );
        }
        PkiCmd::Issue {
            kind,
            name,
            san,
            days,
            csr,
            out,
        } => {
            let mut ca = Ca::open(dir)?;
            let csr = csr
                .as_ref()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            let issued = ca.issue(kind, &name, &san, days, csr.as_deref(), now)?;
            qrcash_io::files::private_dir(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let cert = out.join(format!("{name}.pem"));
            std::fs::write(&cert, &issued.cert_pem)
                .with_context(|| format!("writing {}", cert.display()))?;
            println!(
                "{}: serial {}, valid {days} days",
                cert.display(),
                issued.entry.serial
            );
            if let Some(key) = &issued.key_pem {
                let path = out.join(format!("{name}.key"));
                write_owner_only(&path, key.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}: its key (0600)", path.display());
            }
        }
        PkiCmd::Revoke { which, crl_days } => {
            let mut ca = Ca::open(dir)?;
            for c in ca.revoke(&which, now)? {
                println!("revoked {} ({})", c.serial, c.name);
            }
            let crl = ca.crl(crl_days, now)?;
            println!(
                "{} written, valid {crl_days} days: copy it to the broker (crlfile) and restart the broker (Mosquitto reads it at start only)",
                crl.display()
            );
        }
        PkiCmd::Crl { days } => {
            let crl = Ca::open(dir)?.crl(days, now)?;
            println!("{} written, valid {days} days", crl.display());
        }
        PkiCmd::List => {
            let ca = Ca::open(dir)?;
            for c in ca.issued() {
                let left = (c.not_after as i64 - now as i64) / 86_400;
                let state = match c.revoked_at {
                    Some(_) => "revoked".to_owned(),
                    None if left < 0 => "expired".to_owned(),
                    None if left < 30 => format!("{left} days left: RENEW"),
                    None => format!("{left} days left"),
                };
                println!(
                    "{}  {:<6}  {:<24}  {state}",
                    c.serial,
                    format!("{:?}", c.kind).to_lowercase(),
                    c.name
                );
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file only its owner can read (0600).
fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn now() -> u64 {
    SystemClock.now()
}

fn currency(code: &str) -> Result<Currency> {
    Currency::new(code).map_err(anyhow::Error::msg)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .context("writing the manual page"),
        Command::Migrate => {
            let config = load(&cli.config)?;
            let store = open(&config)?;
            println!(
                "database {}: schema version {}",
                config.database_name(),
                store.schema_version()?
            );
            Ok(())
        }
        Command::Init {
            force,
            keep_config,
            existing_key,
        } => init(&cli.config, force, keep_config, existing_key),
        Command::Serve { embedded_broker } => serve(&cli.config, embedded_broker),
        Command::Account(c) => account(&cli.config, c),
        Command::Device(c) => device(&cli.config, c),
        Command::Pki { dir, command } => pki(&dir, command),
        Command::Atm(AtmCmd::Reconcile { id }) => {
            let config = load(&cli.config)?;
            let store = open(&config)?;
            let intervals = admin::reconcile_atm(&store, &id)?;
            let mut missing = false;
            for i in &intervals {
                for c in &i.cassettes {
                    use qrcash_hub::reconcile::Verdict;
                    let verdict = match c.verdict {
                        Verdict::Balanced => "balanced".to_owned(),
                        Verdict::Added(n) => format!("+{n} added (replenished or counted)"),
                        Verdict::Missing(n) => {
                            missing = true;
                            format!("{n} UNACCOUNTED")
                        }
                    };
                    println!(
                        "{} -> {}  {:>6}: {} -> {} notes, {} dispensed: {verdict}",
                        i.from, i.to, c.denomination, c.before, c.after, c.picked
                    );
                }
            }
            if intervals.is_empty() {
                println!("ATM {id}: fewer than two cassette reports yet, nothing to reconcile");
            }
            if missing {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Atm(AtmCmd::EnrolCode {
            id,
            name,
            address,
            lat,
            lon,
            denominations,
            valid_hours,
            png,
        }) => {
            let config = load(&cli.config)?;
            if id == config.hub_id {
                bail!("ATM id {id:?} is this hub's own id");
            }
            let pending = match (name, address, lat, lon, denominations) {
                (None, None, None, None, None) => None,
                (Some(name), Some(address), Some(lat), Some(lon), Some(denominations)) => {
                    Some(qrcash_hub::store::registry::PendingAtm {
                        name,
                        address,
                        position: Position::new(lat, lon, 0.0),
                        denominations,
                    })
                }
                _ => bail!(
                    "a new ATM needs all of --name, --address, --lat, --lon and --denominations; an enrolled one none of them"
                ),
            };
            let mut store = open(&config)?;
            let now = now();
            let code =
                admin::issue_enrolment_code(&mut store, &id, pending, valid_hours * 3600, now)?;
            let payload = qrcash_protocol::enrol::qr_payload(&id, &code);
            let qr = qrcode::QrCode::new(payload.as_bytes()).context("encoding the QR code")?;
            if let Some(path) = &png {
                // The code is a secret until used: owner-only, like a key.
                let mut bytes = std::io::Cursor::new(Vec::new());
                qr.render::<image::Luma<u8>>()
                    .module_dimensions(8, 8)
                    .build()
                    .write_to(&mut bytes, image::ImageFormat::Png)
                    .context("encoding the PNG")?;
                write_owner_only(path, bytes.get_ref())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!(
                "{}",
                qr.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            );
            println!("enrolment code for ATM {id}: {}", code.grouped());
            println!(
                "valid for {valid_hours} h (until {}), once; 5 wrong proofs lock it",
                now + valid_hours * 3600
            );
            println!(
                "on the board: qrcash-agent enrol --code {}   (or --scan, showing the QR code to its camera)",
                code.grouped()
            );
            Ok(())
        }
        Command::Atm(AtmCmd::Enroll {
            id,
            key_file,
            name,
            address,
            lat,
            lon,
            denominations,
        }) => {
            let config = load(&cli.config)?;
            if id == config.hub_id {
                bail!("ATM id {id:?} is this hub's own id");
            }
            let mut store = open(&config)?;
            let text = std::fs::read_to_string(&key_file)
                .with_context(|| format!("cannot read ATM key {}", key_file.display()))?;
            let key = PublicKey::from_jwk_json(&text)
                .with_context(|| format!("{} is not an Ed25519 public JWK", key_file.display()))?;
            admin::enroll_atm(
                &mut store,
                &NewAtm {
                    id: id.clone(),
                    public_key: key.to_jwk(),
                    name,
                    address,
                    position: Position::new(lat, lon, 0.0),
                    denominations,
                },
                now(),
            )?;
            println!("ATM {id} enrolled with key {}", key.kid());
            Ok(())
        }
        Command::Merchant(MerchantCmd::Add {
            id,
            name,
            lat,
            lon,
            currency: cur,
        }) => {
            let config = load(&cli.config)?;
            let mut store = open(&config)?;
            admin::add_merchant(
                &mut store,
                &NewMerchant {
                    id: id.clone(),
                    name,
                    currency: currency(&cur)?,
                    position: Position::new(lat, lon, 0.0),
                },
                now(),
            )?;
            println!("merchant {id} added");
            Ok(())
        }
        Command::Tx(c) => tx(&cli.config, c),
        Command::Ledger(LedgerCmd::Check) => {
            let config = load(&cli.config)?;
            let store = open(&config)?;
            let report = admin::ledger_check(&store)?;
            println!("{report}");
            if !report.is_ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Audit(AuditCmd::Tail { n }) => {
            let config = load(&cli.config)?;
            let store = open(&config)?;
            for r in admin::audit_tail(&store, n)? {
                let e = r.entry;
                println!(
                    "{:>6} {} {:<8} {:<10} {:<22} {:<9} {} {}",
                    r.id,
                    e.at,
                    e.source,
                    e.sender.unwrap_or_default(),
                    e.msg_type.unwrap_or_default(),
                    e.outcome,
                    e.reason.unwrap_or_default(),
                    e.detail.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Restriction(c) => {
            let config = load(&cli.config)?;
            let mut store = open(&config)?;
            match c {
                RestrictionCmd::List => {
                    for d in admin::list_restrictions(&store, now())? {
                        println!(
                            "{:<20} {:<16} until {} ({})",
                            d.id,
                            d.account,
                            d.restricted_until.unwrap_or(0),
                            d.restriction_reason.unwrap_or_default()
                        );
                    }
                }
                RestrictionCmd::Lift { device } => {
                    admin::lift_restriction(&mut store, &device, now())?;
                    println!("restriction of {device} lifted");
                }
            }
            Ok(())
        }
    }
}

fn init(path: &Path, force: bool, keep_config: bool, existing_key: bool) -> Result<()> {
    if keep_config {
        if !path.exists() {
            bail!(
                "{} does not exist (--keep-config uses it as it is)",
                path.display()
            );
        }
    } else {
        if path.exists() && !force {
            bail!("{} exists; use --force to overwrite it", path.display());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, DEFAULT_CONFIG_TOML)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let config = load(path)?;
    if existing_key && !config.key_file.exists() {
        bail!(
            "the hub key {} does not exist; restore it from the backup (a new key would cut off every ATM and phone that trusts the old one), or run init without --existing-key to make one on purpose",
            config.key_file.display()
        );
    }
    let key = PrivateKey::load_or_generate(&config.key_file)
        .with_context(|| format!("hub key {}", config.key_file.display()))?;
    let _store = open(&config)?;
    let jwk = serde_json::to_string_pretty(&key.public().to_jwk())?;
    let pub_path = config.key_file.with_extension("pub.jwk");
    std::fs::write(&pub_path, format!("{jwk}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    println!("config:    {}", path.display());
    println!(
        "hub key:   {} (kid {})",
        config.key_file.display(),
        key.kid()
    );
    println!(
        "public:    {} (give it to ATM agents and phones)",
        pub_path.display()
    );
    println!("database:  {}", config.database_name());
    Ok(())
}

fn serve(path: &Path, embedded: bool) -> Result<()> {
    let mut config = load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        if embedded {
            let broker = qrcash_hub::embedded_broker::start(config.broker.embedded_port)?;
            config.broker.url = broker.url();
            config.broker.ca_file = None;
            config.broker.cert_file = None;
            config.broker.key_file = None;
            println!("embedded MQTT broker on {}", broker.url());
        }
        let url = config.broker.url.clone();
        // Listening before the service starts, so that a stop asked for at once is clean too.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let handle = HubService::from_config(config)
            .await
            .context("cannot start the hub")?;
        tracing::info!(broker = %url, "hub running; SIGINT or SIGTERM stops it");
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        handle.shutdown().await;
        Ok(())
    })
}

fn signed_out_list(devices: &[String]) -> String {
    if devices.is_empty() {
        "no device had a session".to_owned()
    } else {
        devices.join(", ")
    }
}

/// Reads the password and PIN from the environment, else two lines of standard input.
fn secrets() -> Result<(String, String)> {
    let from_env = (
        std::env::var("QRCASH_PASSWORD").ok(),
        std::env::var("QRCASH_PIN").ok(),
    );
    if let (Some(p), Some(n)) = from_env {
        return Ok((p, n));
    }
    eprintln!("password, then PIN, one per line:");
    let mut lines = std::io::stdin().lock().lines();
    let mut next = |what: &str| -> Result<String> {
        lines
            .next()
            .transpose()?
            .map(|l| l.trim_end().to_owned())
            .with_context(|| format!("no {what} given on standard input"))
    };
    let password = next("password")?;
    let pin = next("PIN")?;
    Ok((password, pin))
}

fn account(path: &Path, c: AccountCmd) -> Result<()> {
    let config = load(path)?;
    let mut store = open(&config)?;
    match c {
        AccountCmd::Create {
            id,
            currency: cur,
            opening,
        } => {
            let (password, pin) = secrets()?;
            let cost = HashCost {
                memory_kib: config.auth.argon2_memory_kib,
                iterations: config.auth.argon2_iterations,
            };
            admin::create_account(
                &mut store,
                &NewAccount {
                    id: id.clone(),
                    currency: currency(&cur)?,
                    password,
                    pin,
                    opening_balance: opening,
                },
                cost,
                now(),
            )?;
            println!("account {id} created with {opening} {cur}");
        }
        AccountCmd::Show { id } => {
            let v = admin::show_account(&store, &id)?;
            let a = &v.account;
            println!("account   {} ({})", a.id, a.currency);
            println!("available {}", v.available);
            println!("held      {}", v.held);
            match &a.frozen_reason {
                Some(r) if a.frozen => println!("FROZEN    {r}"),
                _ if a.frozen => println!("FROZEN"),
                _ => println!("frozen    no"),
            }
            if a.pin.locked_until > now() {
                println!("PIN locked until {}", a.pin.locked_until);
            }
            for d in &v.devices {
                print_device(d, a);
            }
        }
        AccountCmd::Password { id } => {
            let password = match std::env::var("QRCASH_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    eprintln!("new password:");
                    std::io::stdin()
                        .lock()
                        .lines()
                        .next()
                        .transpose()?
                        .map(|l| l.trim_end().to_owned())
                        .context("no password given on standard input")?
                }
            };
            let cost = HashCost {
                memory_kib: config.auth.argon2_memory_kib,
                iterations: config.auth.argon2_iterations,
            };
            let out = admin::change_password(&mut store, &id, &password, cost, now())?;
            println!(
                "password of {id} changed; signed out: {}",
                signed_out_list(&out)
            );
        }
        AccountCmd::SignOut { id } => {
            let out = admin::sign_out_devices(&mut store, &id, now())?;
            println!("{id}: signed out: {}", signed_out_list(&out));
        }
        AccountCmd::Unfreeze { id } => {
            admin::unfreeze_account(&mut store, &id, now())?;
            println!("account {id} unfrozen");
        }
        AccountCmd::BankAdd {
            account,
            id,
            bank,
            number,
            holder,
        } => {
            admin::add_bank_account(
                &mut store,
                &NewBankAccount {
                    id: id.clone(),
                    account: account.clone(),
                    bank,
                    number,
                    holder,
                },
                now(),
            )?;
            println!("bank account {id} registered for {account}");
        }
    }
    Ok(())
}

fn print_device(
    d: &qrcash_hub::store::rows::DeviceRow,
    account: &qrcash_hub::store::rows::AccountRow,
) {
    let status = match d.status {
        qrcash_hub::store::rows::DeviceStatus::Active => "active",
        qrcash_hub::store::rows::DeviceStatus::Revoked => "revoked",
    };
    let restriction = match restriction::effective_restriction(account, d, now()) {
        Some(r) => format!(
            "restricted ({:?}) until {}",
            r.reason,
            r.until
                .map_or("an operator lifts it".into(), |u| u.to_string())
        ),
        None => "free".into(),
    };
    println!(
        "device    {:<20} {:<8} last login {:<12} {} {}",
        d.id,
        status,
        d.last_login_at.unwrap_or(0),
        restriction,
        d.revoked_reason.as_deref().unwrap_or("")
    );
}

fn device(path: &Path, c: DeviceCmd) -> Result<()> {
    let config = load(path)?;
    let mut store = open(&config)?;
    match c {
        DeviceCmd::List { account } => {
            for d in admin::list_devices(&store, account.as_deref())? {
                let a = admin::show_account(&store, &d.account)?.account;
                print!("{:<16} ", d.account);
                print_device(&d, &a);
            }
        }
        DeviceCmd::Revoke { id, reason } => {
            admin::revoke_device(&mut store, &id, &reason, now())?;
            println!("device {id} revoked");
        }
    }
    Ok(())
}

fn tx(path: &Path, c: TxCmd) -> Result<()> {
    let config = load(path)?;
    let mut store = open(&config)?;
    match c {
        TxCmd::List {
            phase,
            flagged,
            account,
            limit,
        } => {
            let phase = phase
                .map(|p| p.parse::<Phase>().map_err(anyhow::Error::msg))
                .transpose()?;
            let list = admin::list_withdrawals(
                &store,
                &TxFilter {
                    phase,
                    flagged,
                    account,
                    limit: Some(limit),
                },
            )?;
            for w in list {
                println!(
                    "{} {:<10} {:<12} {:>10} {:<10} {}{}",
                    w.tx_id,
                    w.phase,
                    w.account,
                    w.amount,
                    w.atm_id.as_deref().unwrap_or("-"),
                    if w.needs_reconciliation {
                        "FLAGGED "
                    } else {
                        ""
                    },
                    w.note.as_deref().unwrap_or("")
                );
            }
        }
        TxCmd::Show { tx } => {
            let id: TxId = tx.parse().map_err(anyhow::Error::msg)?;
            let (w, reports) = admin::show_withdrawal(&store, &id)?;
            let evidence = admin::withdrawal_evidence(&store, &id)?;
            let resolution = admin::resolution_of(&store, &id)?;
            let corrections = admin::corrections(&store, Some(&id), false)?;
            print!(
                "{}",
                show_text(&w, &reports, &evidence, resolution.as_ref(), &corrections)
            );
        }
        TxCmd::ClearFlag { tx, note } => {
            let id: TxId = tx.parse().map_err(anyhow::Error::msg)?;
            admin::clear_flag(&mut store, &id, &note, now())?;
            println!("{id}: flag cleared");
        }
        TxCmd::Resolve {
            tx,
            dispensed,
            operator,
            reason,
        } => {
            let id: TxId = tx.parse().map_err(anyhow::Error::msg)?;
            let phase = admin::resolve_withdrawal(
                &mut store,
                &id,
                &admin::Resolution {
                    dispensed,
                    operator,
                    reason,
                },
                config.withdrawal.report_grace_s,
                now(),
            )?;
            println!("{id} resolved: {phase}; a receipt is queued for the customer");
        }
        TxCmd::Correction(CorrectionCmd::List { all }) => {
            let list = admin::corrections(&store, None, !all)?;
            if list.is_empty() {
                println!("no corrections{}", if all { "" } else { " waiting" });
            }
            for c in list {
                println!(
                    "{} tx {} {:?}: settled {} -> {} ({}){}",
                    c.id,
                    c.tx_id,
                    c.state,
                    c.from_settled,
                    c.to_settled,
                    c.cause,
                    c.decided_by
                        .map(|by| format!(
                            "; decided by {by}: {}",
                            c.decision_note.unwrap_or_default()
                        ))
                        .unwrap_or_default()
                );
            }
        }
        TxCmd::Correction(CorrectionCmd::Approve {
            id,
            operator,
            reason,
        }) => {
            let phase = admin::decide_correction(&mut store, id, true, &operator, &reason, now())?;
            println!("correction {id} approved: the withdrawal is {phase}");
        }
        TxCmd::Correction(CorrectionCmd::Reject {
            id,
            operator,
            reason,
        }) => {
            admin::decide_correction(&mut store, id, false, &operator, &reason, now())?;
            println!("correction {id} rejected");
        }
    }
    Ok(())
}

/// `tx show` for a person: what was planned, counted and settled, and on what evidence.
fn show_text(
    w: &qrcash_hub::store::rows::WithdrawalRow,
    reports: &[admin::ReportRow],
    e: &qrcash_hub::evidence::Evidence,
    resolution: Option<&qrcash_hub::store::settlement::ResolutionRow>,
    corrections: &[qrcash_hub::store::settlement::CorrectionRow],
) -> String {
    use qrcash_hub::evidence::{Notes, source_name};
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "transaction  {}", w.tx_id);
    let _ = writeln!(s, "account      {} (device {})", w.account, w.device_id);
    let _ = writeln!(s, "amount       {}", w.amount);
    let _ = writeln!(
        s,
        "phase        {}{}",
        w.phase,
        if w.needs_reconciliation {
            "  FLAGGED"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "settled      {}", w.settled);
    let _ = writeln!(s, "atm          {}", w.atm_id.as_deref().unwrap_or("-"));
    if let Some(order) = &w.order_id {
        let _ = writeln!(
            s,
            "order        {order} (expires {})",
            w.order_expires_at.unwrap_or(0)
        );
    }
    if let Some(note) = &w.note {
        let _ = writeln!(s, "note         {note}");
    }
    let _ = writeln!(s, "planned      {} (the order's notes)", Notes(&e.planned));
    let _ = writeln!(
        s,
        "counted      {} (known to have left, from the reports below)",
        Notes(&e.counted)
    );
    let _ = writeln!(
        s,
        "bounds       {} ..= {} left the machine{}",
        e.low,
        e.high,
        if e.conflicting {
            "  (the reports disagree: widest bounds shown)"
        } else if e.reports.is_empty() {
            "  (no report: nothing is known)"
        } else {
            ""
        }
    );
    for (row, r) in reports
        .iter()
        .zip(e.reports.iter().map(Some).chain(std::iter::repeat(None)))
    {
        let _ = writeln!(
            s,
            "report       at {} from {}: {} {} (applied: {})",
            row.received_at, row.atm_id, row.outcome, row.dispensed, row.applied
        );
        if let Some(r) = r {
            let _ = writeln!(
                s,
                "             counted {} by {}; {}",
                Notes(&r.counted),
                source_name(r.source),
                match r.bounds {
                    Some((l, h)) if l == h => format!("exactly {l}"),
                    Some((l, h)) => format!("between {l} and {h}"),
                    None => "contradicts itself: bounds nothing".into(),
                }
            );
        }
    }
    if let Some(r) = resolution {
        let _ = writeln!(
            s,
            "resolution   {} by {} at {}: {} (bounds then {}..={})",
            r.dispensed, r.operator, r.resolved_at, r.reason, r.low, r.high
        );
    }
    for c in corrections {
        let _ = writeln!(
            s,
            "correction   {} {:?}: {} -> {} ({})",
            c.id, c.state, c.from_settled, c.to_settled, c.cause
        );
    }
    s
}
