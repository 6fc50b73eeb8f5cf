//! `qrcash-fault-campaign`: the long fault-injection campaign (and the agent it drives).
//!
//! `qrcash-fault-campaign --scenarios 2000 --seed 7 [--seeds N] [--quiet] [--hubs 3 | --nats 3]`
//! builds the world of `qrcash_tests::scenario` (private Mosquitto, hub service, agent child
//! process, LCDM simulator, phone; with `--hubs N`, N hub instance processes on a private
//! PostgreSQL instead of the in-process hub on SQLite; with `--nats N`, a private cluster of
//! N NATS nodes instead of Mosquitto, the agent's node killed instead of the whole broker
//! restarted), runs one fault per withdrawal, checks the money invariants after each,
//! sweeps past every deadline at the end and checks once more. With `--seeds N` it runs N
//! campaigns of `--scenarios` each, with the seeds `seed`, `seed + 1`, …, each in a fresh
//! world, and prints every seed with its result for replay. Exit status 1 on any violation,
//! with the seed to replay (`QRCASH_FAULT_SEED` is read when `--seed` is absent).
//!
//! `qrcash-fault-campaign agent --config FILE` runs the ATM agent exactly as `qrcash-agent
//! run` does (files camera, LCDM dispenser, crash hooks from `QRCASH_AGENT_CRASH_AT`): the
//! campaign spawns it so it can SIGKILL it, and the default test suite can reach this binary
//! (`CARGO_BIN_EXE_*` only names binaries of the crate under test).
//! `qrcash-fault-campaign hub --config FILE` runs one hub instance as `qrcash-hub run` does,
//! for the suites that SIGKILL hub instances (`tests/tests/hub_instances.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use qrcash_tests::scenario::{BrokerSetup, HubSetup, Settings, campaign};

/// Runs randomized fault scenarios against the real hub, agent and simulator and checks
/// the money invariants after each; a failing seed is printed for replay.
#[derive(Debug, Parser)]
#[command(name = "qrcash-fault-campaign")]
struct Args {
    /// Scenarios per seed.
    #[arg(long, default_value_t = 200)]
    scenarios: usize,
    /// The first seed (default: the time); replays a failure exactly.
    #[arg(long, env = "QRCASH_FAULT_SEED")]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Only the summary, not every scenario.
    #[arg(long)]
    quiet: bool,
    /// Run this many hub instance processes on one PostgreSQL database (a private server
    /// started from `scripts/postgres.sh`) instead of one hub in this process on SQLite;
    /// adds hub instance kills and database restarts to the faults.
    #[arg(long, conflicts_with = "nats")]
    hubs: Option<usize>,
    /// Run the broker as a private cluster of this many NATS nodes (3 or more) instead of one
    /// Mosquitto; the broker fault then kills the node the agent is connected to.
    #[arg(long)]
    nats: Option<usize>,
    /// The role the campaign starts this binary in.
    #[command(subcommand)]
    role: Option<Role>,
}

/// A process the campaign runs as a child of itself.
#[derive(Debug, clap::Subcommand)]
enum Role {
    /// The ATM agent of one scenario (killed and restarted by the campaign).
    #[command(hide = true)]
    Agent {
        /// The agent's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// One hub instance, as `qrcash-hub run` runs it (SIGKILLed and restarted by the suites
    /// that run several instances on one database).
    #[command(hide = true)]
    Hub {
        /// The hub's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.role {
        Some(Role::Agent { config }) => return run_agent(config),
        Some(Role::Hub { config }) => return run_hub(config),
        None => {}
    }
    let (scenarios, seeds, seed, verbose) = (args.scenarios, args.seeds, args.seed, !args.quiet);
    let hubs = match args.hubs {
        None => HubSetup::Embedded,
        Some(0) => bail!("--hubs needs at least one instance"),
        Some(n) => HubSetup::Instances(n),
    };
    let broker = match args.nats {
        None => BrokerSetup::Mosquitto,
        Some(n) if n < 3 => bail!("--nats needs at least three nodes to lose one"),
        Some(n) => BrokerSetup::Nats(n),
    };
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let agent_exe = std::env::current_exe().context("locating this executable")?;
    let rt = runtime()?;
    let mut failed = Vec::new();
    let mut total = 0usize;
    for seed in (0..seeds.max(1)).map(|i| seed.wrapping_add(i)) {
        match run_seed(&rt, seed, scenarios, &agent_exe, verbose, (hubs, broker)) {
            Ok(n) => total += n,
            Err(e) => {
                eprintln!("seed {seed} FAILED: {e:#}");
                failed.push(seed);
            }
        }
    }
    if seeds > 1 {
        println!(
            "{} seeds ({}..={}), {total} scenarios completed; failed seeds: {}",
            seeds,
            seed,
            seed.wrapping_add(seeds - 1),
            if failed.is_empty() {
                "none".to_owned()
            } else {
                failed
                    .iter()
                    .map(|s| format!("--seed {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    if !failed.is_empty() {
        bail!("{} of {seeds} seeds failed", failed.len());
    }
    Ok(())
}

/// One campaign; returns the scenarios run.
fn run_seed(
    rt: &tokio::runtime::Runtime,
    seed: u64,
    scenarios: usize,
    agent_exe: &std::path::Path,
    verbose: bool,
    (hubs, broker): (HubSetup, BrokerSetup),
) -> Result<usize> {
    let agent_exe = agent_exe.to_path_buf();
    eprintln!(
        "fault campaign: {scenarios} scenarios, seed {seed}, hub {hubs:?}, broker {broker:?} (replay: --seed {seed})"
    );
    let summary = rt
        .block_on(campaign(
            Settings {
                seed,
                agent_exe,
                verbose,
                hubs,
                broker,
            },
            scenarios,
            true,
        ))
        .map_err(|e| anyhow::anyhow!("{e} (replay with --seed {seed})"))?;
    println!("{}", summary.table());
    let final_v = summary.final_verdict.clone().unwrap_or_default();
    println!(
        "seed {seed}: {} scenarios ({} could not finish) in {:.1} s ({:.2} s each); {} withdrawals, {} orders, {} in doubt, {} yen paid out, {} yen captured; {} violations",
        summary.scenarios,
        summary.errors.len(),
        summary.took.as_secs_f64(),
        summary.took.as_secs_f64() / summary.scenarios.max(1) as f64,
        final_v.withdrawals,
        final_v.orders,
        final_v.in_doubt,
        final_v.delivered_value,
        final_v.captured,
        summary.violations.len()
    );
    for e in &summary.errors {
        eprintln!("SCENARIO ERROR {e}");
    }
    if !summary.errors.is_empty() {
        bail!(
            "{} scenarios could not run to the end (replay with --seed {seed})",
            summary.errors.len()
        );
    }
    if !summary.violations.is_empty() {
        for v in &summary.violations {
            eprintln!("VIOLATION {v}");
        }
        bail!(
            "{} invariant violations (replay with --seed {seed})",
            summary.violations.len()
        );
    }
    Ok(summary.scenarios)
}

/// Runs one hub instance until killed (or SIGINT/SIGTERM), like `qrcash-hub run`; prints
/// `hub ready` on standard error once it is connected and subscribed.
fn run_hub(config: PathBuf) -> Result<()> {
    init_logging();
    let cfg = qrcash_hub::config::HubConfig::load(&config)
        .with_context(|| format!("loading {}", config.display()))?;
    let rt = runtime()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let hub = qrcash_hub::service::HubService::from_config(cfg)
            .await
            .context("starting the hub")?;
        if !hub.wait_ready(Duration::from_secs(30)).await {
            bail!("the hub did not subscribe within 30 s");
        }
        eprintln!("hub ready");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        hub.shutdown().await;
        Ok(())
    })
}

/// The async runtime of each role: two workers, as the machines it runs on have.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Runs the agent until killed (or SIGINT), like `qrcash-agent run`.
fn run_agent(config: PathBuf) -> Result<()> {
    init_logging();
    let cfg = qrcash_agent::AgentConfig::load(&config)
        .with_context(|| format!("loading {}", config.display()))?;
    let camera_cfg = cfg.camera.clone().context("no [camera] section")?;
    let dispenser_cfg = cfg.dispenser.clone().context("no [dispenser] section")?;
    let rt = runtime()?;
    rt.block_on(async move {
        let camera = qrcash_hardware::camera::open(&camera_cfg).context("opening the camera")?;
        let dispenser = qrcash_hardware::dispenser::lcdm::LcdmDispenser::open(dispenser_cfg)
            .context("opening the dispenser")?;
        let agent = qrcash_agent::Agent::start(cfg, camera.source, Box::new(dispenser))
            .await
            .context("starting the agent")?;
        tokio::signal::ctrl_c()
            .await
            .context("waiting for a signal")?;
        agent.shutdown().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    })
}
