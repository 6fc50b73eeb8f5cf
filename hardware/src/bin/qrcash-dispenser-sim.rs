//! `qrcash-dispenser-sim`: a simulated Puloon LCDM-1000/2000 on a pseudo-terminal, for
//! running the agent without hardware.
//!
//! Creates a pty, symlinks its device path at `--pty-link`, and serves until killed. Point the
//! agent's `[dispenser] port` at the link. Faults can be set at start with flags, or changed
//! while running through a JSON `--faults` file, which is re-read whenever it changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use qrcash_hardware::dispenser::lcdm::CombinedFieldOrder;
use qrcash_hardware::dispenser::sim::{Faults, SimConfig, Simulator};

/// Simulated LCDM cash dispenser on a pseudo-terminal.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where to create a symlink to the pty's device path (replaced if it is a symlink).
    #[arg(long)]
    pty_link: PathBuf,
    /// Number of cassettes: 1 (LCDM-1000) or 2 (LCDM-2000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    cassettes: u8,
    /// Notes per cassette, comma-separated (default 500 each).
    #[arg(long, value_delimiter = ',')]
    notes: Vec<u32>,
    /// JSON state file: loaded at start if present (notes, notes in the path after a power
    /// loss), written after every note.
    #[arg(long)]
    state: Option<PathBuf>,
    /// JSON faults file, re-read whenever it changes, e.g. {"jam_after": 3}.
    #[arg(long)]
    faults: Option<PathBuf>,
    /// Near-end threshold in notes.
    #[arg(long, default_value_t = 50)]
    near_end: u32,
    /// Milliseconds per note moved.
    #[arg(long, default_value_t = 150)]
    note_interval_ms: u64,
    /// Field order of the combined (0x56) response.
    #[arg(long, value_enum, default_value_t = Order::PerCassette)]
    combined_order: Order,
    /// Fault: jam at CHK after this many notes.
    #[arg(long)]
    jam_after: Option<u32>,
    /// Fault: pickup error after this many notes.
    #[arg(long)]
    pickup_error_after: Option<u32>,
    /// Fault: bill end after this many notes.
    #[arg(long)]
    bill_end_after: Option<u32>,
    /// Fault: power loss after this many notes, one note left in the path.
    #[arg(long)]
    power_loss_after: Option<u32>,
    /// Fault: report near end regardless of the count.
    #[arg(long)]
    force_near_end: bool,
    /// Fault: the next N picked notes are doubles (rejected).
    #[arg(long, default_value_t = 0)]
    reject_next: u32,
    /// Fault: ignore everything (dead device).
    #[arg(long)]
    no_answer: bool,
    /// Fault: damage the BCC of the next N responses.
    #[arg(long, default_value_t = 0)]
    corrupt_responses: u32,
    /// Fault: NAK the next N commands.
    #[arg(long, default_value_t = 0)]
    nak_commands: u32,
    /// Fault: the next N ACKs from the host are lost (the device repeats its response).
    #[arg(long, default_value_t = 0)]
    lose_acks: u32,
    /// Fault: idle noise bytes (0xFF) before every ACK and response.
    #[arg(long)]
    line_noise: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Order {
    PerCassette,
    PerSensor,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cassettes = usize::from(args.cassettes);
    let notes = match args.notes.len() {
        0 => vec![500; cassettes],
        n if n == cassettes => args.notes.clone(),
        n => bail!("--notes gives {n} count(s) for {cassettes} cassette(s)"),
    };
    let config = SimConfig {
        cassettes,
        notes,
        near_end_threshold: args.near_end,
        note_interval: Duration::from_millis(args.note_interval_ms),
        combined_field_order: match args.combined_order {
            Order::PerCassette => CombinedFieldOrder::PerCassette,
            Order::PerSensor => CombinedFieldOrder::PerSensor,
        },
        state_file: args.state.clone(),
        faults_file: args.faults.clone(),
        faults: Faults {
            jam_after: args.jam_after,
            pickup_error_after: args.pickup_error_after,
            bill_end_after: args.bill_end_after,
            power_loss_after: args.power_loss_after,
            force_near_end: args.force_near_end,
            reject_next: args.reject_next,
            no_answer: args.no_answer,
            corrupt_responses: args.corrupt_responses,
            nak_commands: args.nak_commands,
            lose_acks: args.lose_acks,
            line_noise: args.line_noise,
            ..Faults::default()
        },
        ..SimConfig::lcdm1000(0)
    };
    let sim = Simulator::spawn(config).context("starting the simulator")?;
    link(sim.port_path(), &args.pty_link)?;
    tracing::info!(
        pty = sim.port_path(),
        link = %args.pty_link.display(),
        "serving; stop with Ctrl-C or kill"
    );
    sim.join();
    Ok(())
}

/// Points `link` at `target`, replacing an old symlink but never a regular file.
fn link(target: &str, link: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)
            .with_context(|| format!("removing the old link {}", link.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a symlink; choose another --pty-link",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {target}", link.display()))
}
