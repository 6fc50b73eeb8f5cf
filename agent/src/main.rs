//! `qrcash-agent`: the ATM agent's command line.
//!
//! `keygen` makes the ATM's signing key and prints the public JWK for enrolment at the hub;
//! `run` runs the agent; `decode FILE...` reads QR codes from images (camera checks);
//! `journal export` writes the electronic journal; `status` reads the database; `doctor`
//! checks the board's set-up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use qrcash_agent::store::{JournalKind, Store};
use qrcash_agent::{Agent, AgentConfig};
use qrcash_hardware::dispenser::Dispenser;
use qrcash_hardware::dispenser::lcdm::LcdmDispenser;
use qrcash_hardware::dispenser::reopen::Reopening;
use qrcash_io::KeyFile;
use qrcash_protocol::keyset::HubTrust;
use qrcash_protocol::{Clock, PrivateKey};

/// The exit status of `run` when the configuration does not load (sysexits' EX_CONFIG).
const EXIT_CONFIG: i32 = 78;

/// `--version`: the version and whether the camera (Video4Linux) is compiled in, which a
/// technician needs to know of a binary and the package test checks.
#[cfg(feature = "v4l")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (camera: v4l)");
#[cfg(not(feature = "v4l"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (camera: files only)");

#[derive(Parser)]
#[command(name = "qrcash-agent", version = VERSION, about = "qrcash ATM agent")]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "QRCASH_AGENT_CONFIG",
        default_value = "/etc/qrcash/agent.toml",
        global = true
    )]
    config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Create the ATM's signing key (0600) and print its public JWK for the hub operator.
    Keygen {
        /// Where to write the key (default: `key_file` from the configuration).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Run the agent.
    Run,
    /// Enrol this board with the hub by the one-time code the hub operator issued for its ATM
    /// id (`qrcash-hub atm enrol-code`): proves the code without sending it, enrols the
    /// board's key (made now if it has none), and writes the hub's keys, its id and the
    /// broker it names into the configuration.
    Enrol {
        /// The code as shown (ABCD-EFGH-IJKL-MNOP); without it, the QR code is read with the
        /// camera.
        #[arg(long)]
        code: Option<String>,
        /// Seconds to look for the QR code.
        #[arg(long, default_value_t = 120)]
        scan_seconds: u64,
        /// Make a new key even though the board has one (refused while its outbox holds
        /// messages signed by the old one).
        #[arg(long)]
        new_key: bool,
        /// Seconds to wait for the hub's answer.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Write the manual page (roff) to standard output (the package installs it).
    #[command(hide = true)]
    Man,
    /// Decode QR codes in image files (checks the camera pipeline on stills).
    Decode {
        /// Image files (PNG, JPEG).
        files: Vec<PathBuf>,
    },
    /// The electronic journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Print the agent's state from its database (JSON).
    Status,
    /// Hand over to a new signing key: the hub enrols it on a message signed with the
    /// current key, and accepts the old key for the ATM messages' maximum age (7 days by
    /// default), so queued messages are still delivered. Run with the agent stopped.
    RotateKey {
        /// Seconds to wait for the hub's answer.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Check the board's set-up and explain each finding: configuration, keys and their
    /// permissions, TLS files, database and disk, outbox, broker, hub, clock, camera and
    /// dispenser. Exits 1 when a check fails. Run it as the agent's user; with the agent
    /// running, the camera and dispenser are left to it.
    Doctor {
        /// Print the findings as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds to watch the camera (0.1 to 60).
        #[arg(long, default_value_t = 2.0)]
        camera_seconds: f64,
        /// Seconds to wait for the broker and for the hub's answer (1 to 300).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        hub_timeout: u64,
    },
    /// The notes in each cassette, as the agent counts them (kept in its database: a
    /// restart never resets them from the configuration).
    Cassettes {
        #[command(subcommand)]
        command: Option<CassetteCommand>,
    },
    /// Messages the hub refused for good (dead letters): list them, or clear one after
    /// dealing with it (journalled).
    DeadLetters {
        #[command(subcommand)]
        command: Option<DeadLetterCommand>,
    },
    /// The hub keys this ATM trusts: those in `hub_keys` and those learned from the hub's
    /// key set (`docs/protocol.md` §3, "The hub's key set").
    HubKeys {
        #[command(subcommand)]
        command: Option<HubKeyCommand>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Print them (JSON); the default.
    List,
    /// Remove one, by its `jti`, after dealing with what the hub refused.
    Clear {
        /// The message's `jti`.
        #[arg(allow_hyphen_values = true)]
        jti: String,
    },
}

#[derive(Subcommand)]
enum HubKeyCommand {
    /// Print the keys (JSON); the default.
    Show,
    /// Forget a learned key for good (journalled): it is never learned again, even from the
    /// hub's key set; takes effect when the agent next starts. A key in `hub_keys` is
    /// removed from the configuration instead.
    Forget {
        /// The key id (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum CassetteCommand {
    /// Print the counts (JSON); the default.
    Show,
    /// Set a cassette's count after replenishing or counting it (journalled as
    /// `cassette_set` with the count before). Works while the agent runs: the next
    /// heartbeat carries it.
    Set {
        /// The cassette's denomination (minor units), as in `[[cassettes]]`.
        #[arg(long)]
        denomination: u64,
        /// The notes now in it.
        #[arg(long)]
        notes: u32,
        /// Why (kept in the journal).
        #[arg(long, default_value = "replenished")]
        why: String,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Write the whole journal to standard output or a file.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; none in the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    match cli.command {
        Command::Decode { files } => decode(&files),
        Command::Man => man(),
        Command::Keygen { out, force } => keygen(&cli.config, out, force),
        Command::Run => {
            // A configuration that does not load will not load on a restart either: exit
            // with EX_CONFIG, which the unit does not restart (RestartPreventExitStatus).
            let cfg = load(&cli.config).unwrap_or_else(|e| {
                eprintln!("qrcash-agent: {e:#}");
                std::process::exit(EXIT_CONFIG)
            });
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(cfg))
        }
        Command::Journal {
            command: JournalCommand::Export { format, out },
        } => {
            let cfg = load(&cli.config)?;
            let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
                .with_context(|| format!("opening {}", cfg.database.display()))?;
            let mut w: Box<dyn std::io::Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let n = match format {
                Format::Jsonl => store.export_jsonl(&mut w)?,
                Format::Csv => store.export_csv(&mut w)?,
            };
            eprintln!("{n} journal entries exported");
            Ok(())
        }
        Command::Cassettes { command } => {
            let cfg = load(&cli.config)?;
            let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
                .with_context(|| format!("opening {}", cfg.database.display()))?;
            let configured: Vec<(u64, u32)> = cfg
                .cassettes
                .iter()
                .map(|c| (c.denomination, c.notes))
                .collect();
            let now = qrcash_protocol::SystemClock.now();
            store.seed_cassettes(&configured, now)?;
            if let Some(CassetteCommand::Set {
                denomination,
                notes,
                why,
            }) = command
            {
                let before = store
                    .set_cassette_count(denomination, notes, now, &why)?
                    .with_context(|| {
                        format!("no cassette of denomination {denomination} is counted (see `cassettes`)")
                    })?;
                eprintln!("cassette {denomination}: {before} -> {notes} notes");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&cassettes_json(&store.cassette_counts()?))?
            );
            Ok(())
        }
        Command::DeadLetters { command } => {
            let cfg = load(&cli.config)?;
            let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
                .with_context(|| format!("opening {}", cfg.database.display()))?;
            if let Some(DeadLetterCommand::Clear { jti }) = &command {
                if !store.clear_dead_letter(jti, qrcash_protocol::SystemClock.now())? {
                    bail!("no dead letter has the jti {jti} (see `dead-letters`)");
                }
                eprintln!("dead letter {jti} cleared");
            }
            println!("{}", serde_json::to_string_pretty(&store.dead_letters()?)?);
            Ok(())
        }
        Command::HubKeys { command } => {
            let cfg = load(&cli.config)?;
            let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
                .with_context(|| format!("opening {}", cfg.database.display()))?;
            let mut trust = HubTrust::new(cfg.load_hub_keys()?, store.hub_trust_state()?);
            if let Some(HubKeyCommand::Forget { kid }) = &command {
                if !trust.forget(kid) {
                    bail!(
                        "{kid} is a configured key (remove it from hub_keys, or from the enrolment file when the configuration names one) or already forgotten"
                    );
                }
                store.save_forgotten_hub_key(&trust, kid, qrcash_protocol::SystemClock.now())?;
                eprintln!("hub key {kid} forgotten; restart the agent for it to take effect");
            }
            println!("{}", serde_json::to_string_pretty(&hub_keys_json(&trust))?);
            Ok(())
        }
        Command::Enrol {
            code,
            scan_seconds,
            new_key,
            timeout,
        } => {
            let options = qrcash_agent::enrol::Options {
                code,
                scan_for: Duration::from_secs(scan_seconds.max(1)),
                new_key,
                timeout: Duration::from_secs(timeout.max(1)),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let outcome = runtime.block_on(qrcash_agent::enrol::run(&cli.config, &options));
            runtime.shutdown_background();
            let o = outcome?;
            println!(
                "ATM {} enrolled with key {} at hub {}",
                o.atm_id, o.kid, o.learned.hub_id
            );
            for f in &o.hub_key_files {
                println!("hub key written to {}", f.display());
            }
            if let Some(url) = o.learned.broker_urls.first() {
                println!("broker set to {url}");
            }
            if let Some((here, hub)) = &o.cassette_mismatch {
                println!(
                    "WARNING: the configuration's cassettes {here:?} differ from the hub's {hub:?}: fix [[cassettes]] before starting the agent"
                );
            }
            println!(
                "{} updated; next: qrcash-agent doctor",
                cli.config.display()
            );
            Ok(())
        }
        Command::RotateKey { timeout } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let outcome = runtime.block_on(qrcash_agent::enrol::rotate(
                &cli.config,
                Duration::from_secs(timeout.max(1)),
            ));
            runtime.shutdown_background();
            let r = outcome?;
            println!(
                "key {} replaced by {}; the hub accepts messages signed by the old key for the ATM messages' maximum age (7 days by default), so queued ones are still delivered",
                r.old_kid, r.new_kid
            );
            Ok(())
        }
        Command::Doctor {
            json,
            camera_seconds,
            hub_timeout,
        } => {
            let options = qrcash_agent::doctor::Options {
                camera_window: Duration::try_from_secs_f64(camera_seconds)
                    .ok()
                    .filter(|d| (0.1..=60.0).contains(&d.as_secs_f64()))
                    .context("--camera-seconds must be between 0.1 and 60")?,
                hub_timeout: Duration::from_secs(hub_timeout),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = runtime.block_on(qrcash_agent::doctor::examine(&cli.config, &options));
            // A camera or serial read that never returned (and timed out) must not keep the
            // doctor from answering: dropping the runtime would wait for it.
            runtime.shutdown_background();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            if !report.healthy() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Status => {
            let cfg = load(&cli.config)?;
            let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
                .with_context(|| format!("opening {}", cfg.database.display()))?;
            let status = status(&mut store, &cfg, qrcash_protocol::SystemClock.now())?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}

fn load(path: &std::path::Path) -> Result<AgentConfig> {
    AgentConfig::load(path)
        .with_context(|| "fix the configuration file (see docs/agent.md)".to_string())
}

/// The manual page, rendered from this command line's own definition.
fn man() -> Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
        .render(&mut std::io::stdout())
        .context("writing the manual page")
}

fn keygen(config: &std::path::Path, out: Option<PathBuf>, force: bool) -> Result<()> {
    let cfg = match &out {
        Some(_) => None,
        // A board not enrolled yet has no hub keys; its key is made first.
        None => Some(AgentConfig::load_unenrolled(config)?),
    };
    let path = match (out, &cfg) {
        (Some(p), _) => p,
        (None, Some(cfg)) => cfg.key_file.clone(),
        (None, None) => unreachable!("loaded above"),
    };
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace the ATM's key (the hub must then re-enrol it; `qrcash-agent enrol --new-key` or `rotate-key` do both)",
            path.display()
        );
    }
    // Replacing the key of this configuration's board: never under a running agent (it keeps
    // signing with the old key, which the hub drops once it enrols the new one) nor over
    // messages queued under the old key (stranded once the hub knows only the new one).
    if let Some(cfg) = cfg
        .as_ref()
        .filter(|c| path.exists() && c.database.exists())
    {
        let mut store = Store::open(&cfg.database, cfg.outbox.bounds())
            .with_context(|| format!("opening {}", cfg.database.display()))?;
        if store.agent_running(qrcash_protocol::SystemClock.now())? {
            bail!(
                "the agent is running with this key: stop it first (systemctl stop qrcash-agent)"
            );
        }
        let waiting = store.outbox_stats()?.messages;
        if waiting > 0 {
            bail!(
                "the outbox holds {waiting} messages signed by the current key, which the hub would drop once it enrols a new one: run the agent until they are delivered, or use `qrcash-agent rotate-key`, which keeps them deliverable"
            );
        }
    }
    let key = PrivateKey::generate();
    key.save(&path)?;
    eprintln!("ATM key written to {} (kid {})", path.display(), key.kid());
    println!("{}", serde_json::to_string_pretty(&key.public().to_jwk())?);
    Ok(())
}

fn decode(files: &[PathBuf]) -> Result<()> {
    if files.is_empty() {
        bail!("name at least one image file");
    }
    let results =
        qrcash_hardware::scan::decode_files(files, qrcash_hardware::scan::ScanConfig::default());
    let mut failed = false;
    for r in results {
        match r.outcome {
            Ok(found) if found.is_empty() => println!("{}: no QR code", r.path.display()),
            Ok(found) => {
                for d in found {
                    let verdict = if qrcash_protocol::token::looks_like_token(&d.payload) {
                        "qrcash code"
                    } else {
                        "not a qrcash code"
                    };
                    println!(
                        "{}: {} ({verdict}, {} us)",
                        r.path.display(),
                        d.payload,
                        r.decode_time.as_micros()
                    );
                }
            }
            Err(e) => {
                failed = true;
                println!("{}: error: {e}", r.path.display());
            }
        }
    }
    if failed {
        bail!("some files could not be read");
    }
    Ok(())
}

async fn run(cfg: AgentConfig) -> Result<()> {
    let camera_cfg = cfg
        .camera
        .clone()
        .context("the configuration has no [camera] section")?;
    let dispenser_cfg = cfg
        .dispenser
        .clone()
        .context("the configuration has no [dispenser] section")?;
    let camera = qrcash_hardware::camera::open(&camera_cfg).context("opening the camera")?;
    // Opened on first use and again after the port fails: a dispenser that is off or
    // unplugged keeps the ATM out of service (with an alarm in the journal) instead of
    // stopping the agent, and it comes back into service once the device answers.
    let cassettes = dispenser_cfg.model.cassettes();
    if dispenser_cfg.journal.is_none() {
        tracing::warn!(
            "[dispenser] journal is not set: after the port is opened again, an interrupted \
             dispense can only be recovered from the device's sensors"
        );
    }
    let dispenser = Reopening::new(
        cassettes,
        Box::new(move || {
            // Asks the device who it is, so a wrong model or a dead line is named at once.
            LcdmDispenser::open_checked(dispenser_cfg.clone())
                .map(|d| Box::new(d) as Box<dyn Dispenser>)
        }),
    );
    // Listening before the agent starts: a stop asked for as soon as the agent reports itself
    // alive is a clean stop too. SIGTERM is what systemd sends, SIGINT what a terminal does.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let agent = Agent::start(cfg, camera.source, Box::new(dispenser))
        .await
        .context("starting the agent")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    agent.shutdown().await;
    Ok(())
}

/// What `hub-keys` prints: each trusted key, where it comes from and what it may sign, then
/// the forgotten ones.
fn hub_keys_json(trust: &HubTrust) -> serde_json::Value {
    let messages: Vec<_> = trust
        .message_keys()
        .iter()
        .map(|k| k.kid().to_string())
        .collect();
    let keys: Vec<_> = trust
        .code_keys()
        .iter()
        .map(|k| {
            let kid = k.kid().to_string();
            let from = if trust.roots().iter().any(|r| r.kid() == k.kid()) {
                "configuration"
            } else {
                "key set"
            };
            let signs = if messages.contains(&kid) {
                "messages and codes"
            } else {
                "codes"
            };
            serde_json::json!({ "kid": kid, "from": from, "trusted_for": signs })
        })
        .collect();
    let state = trust.state();
    serde_json::json!({
        "keys": keys,
        "key_set": { "iat": state.iat, "endorsed_by": state.endorsed_by },
        "forgotten": state.forgotten,
    })
}

fn cassettes_json(counts: &[(u64, u32)]) -> serde_json::Value {
    counts
        .iter()
        .map(|(d, n)| serde_json::json!({ "denomination": d, "notes": n }))
        .collect()
}

/// A status figure with the time it became true.
fn figure(store: &mut Store, key: &str) -> Result<serde_json::Value> {
    let value = store.status_value(key)?;
    let value = value
        .as_deref()
        .map(|v| serde_json::from_str(v).unwrap_or_else(|_| serde_json::json!(v)));
    Ok(serde_json::json!({ "value": value, "since": store.status_since(key)? }))
}

fn status(store: &mut Store, cfg: &AgentConfig, now: u64) -> Result<serde_json::Value> {
    let alive_at = store.status_time("alive_at")?;
    let stopped_at = store.status_time("stopped_at")?;
    // The running agent writes `alive_at` every 5 s; a killed one stops writing it.
    let running = qrcash_agent::runtime::agent_alive(alive_at, stopped_at, now);
    let hub_heard_at = store.status_time("hub_heard_at")?;
    // The hub answers every heartbeat: silence for two of them means it is not reachable.
    let hub_window = cfg.timing.heartbeat_s.saturating_mul(2).saturating_add(10);
    let hub_reachable =
        running && hub_heard_at.is_some_and(|h| now.saturating_sub(h) <= hub_window);
    let agent = serde_json::json!({
        "running": running,
        "checked_at": now,
        "alive_at": alive_at,
        "stopped_at": stopped_at,
        "note": (!running).then_some(
            "the agent is not running: the figures below are as it last recorded them"
        ),
    });
    let screen = figure(store, "screen")?;
    let unfinished: Vec<String> = store
        .unfinished_orders()?
        .into_iter()
        .map(|o| o.order.order_id.to_string())
        .collect();
    let outbox = store.outbox_stats()?;
    let tail = store.journal_tail(10)?;
    Ok(serde_json::json!({
        "agent": agent,
        "screen": screen,
        "state": figure(store, "state")?,
        "link": figure(store, "link")?,
        "hub": { "reachable": hub_reachable, "last_heard_at": hub_heard_at },
        "camera": figure(store, "camera")?,
        "alarm": store.status_value("alarm")?.filter(|_| outbox.full),
        "outbox": outbox,
        "dead_letters": store.dead_letters()?,
        "orders_started": store.order_count()?,
        "orders_unfinished": unfinished,
        "last_seq": store.last_seq()?,
        "recovered": store.journal_of_kind(JournalKind::Recovered)?.len(),
        "cassettes": cassettes_json(&store.cassette_counts()?),
        "journal_tail": tail,
    }))
}
