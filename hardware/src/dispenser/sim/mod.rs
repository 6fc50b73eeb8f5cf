//! LCDM-1000/2000 simulator: the device side of the protocol on a pseudo-terminal, with
//! injectable faults and counters of what physically happened.
//!
//! Use it in-process (tests, the fault-injection suite):
//!
//! ```no_run
//! use qrcash_hardware::dispenser::sim::{Faults, SimConfig, Simulator};
//! use qrcash_hardware::dispenser::lcdm::{LcdmConfig, LcdmDispenser, LcdmModel};
//! use qrcash_hardware::dispenser::{Dispenser, DispenseRequest};
//!
//! let sim = Simulator::spawn(SimConfig::lcdm1000(500)).unwrap();
//! let mut driver =
//!     LcdmDispenser::open(LcdmConfig::new(sim.port_path(), LcdmModel::Lcdm1000)).unwrap();
//! sim.set_faults(Faults { jam_after: Some(3), ..Faults::default() });
//! let outcome = driver.dispense("order-test", &DispenseRequest::upper(10)).unwrap();
//! assert_eq!(sim.counters().delivered, outcome.delivered_total());
//! ```
//!
//! or as the `qrcash-dispenser-sim` binary, which symlinks the pty at a stable path.
//! `mechanism` is the pure paper model, `server` the protocol loop, `state_file` the JSON
//! persistence that makes power loss survivable.

pub mod mechanism;
mod server;
pub mod state_file;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serialport::{SerialPort, TTYPort};

pub use mechanism::{FaultAfter, Faults, Mechanism};

use crate::dispenser::lcdm::message::CombinedFieldOrder;
use crate::dispenser::request::CassetteId;

/// How to build a simulator.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// 1 (LCDM-1000) or 2 (LCDM-2000).
    pub cassettes: usize,
    /// Notes loaded per cassette (ignored when the state file exists).
    pub notes: Vec<u32>,
    /// A cassette at or below this many notes reports near end.
    pub near_end_threshold: u32,
    /// Time per note moved (a real LCDM does about 7 notes a second).
    pub note_interval: Duration,
    /// How long the device waits for the host's ACK of a response before resending.
    pub ack_timeout: Duration,
    /// Time a command frame may take.
    pub frame_timeout: Duration,
    /// CHK/EXIT field order of the combined response.
    pub combined_field_order: CombinedFieldOrder,
    /// What the ROM version command answers.
    pub rom_version: String,
    /// JSON file holding the machine state; loaded at start if it exists, written after every
    /// note and command.
    pub state_file: Option<PathBuf>,
    /// JSON `Faults` file re-read whenever it changes (for the binary).
    pub faults_file: Option<PathBuf>,
    /// Faults active from the start.
    pub faults: Faults,
}

impl SimConfig {
    /// An LCDM-1000 with `notes` notes.
    pub fn lcdm1000(notes: u32) -> Self {
        SimConfig {
            cassettes: 1,
            notes: vec![notes],
            near_end_threshold: 50,
            note_interval: Duration::from_millis(20),
            ack_timeout: Duration::from_millis(500),
            frame_timeout: Duration::from_millis(200),
            combined_field_order: CombinedFieldOrder::default(),
            rom_version: "LCDM-SIM 1.0".to_string(),
            state_file: None,
            faults_file: None,
            faults: Faults::default(),
        }
    }

    /// An LCDM-2000 with `upper` and `lower` notes.
    pub fn lcdm2000(upper: u32, lower: u32) -> Self {
        SimConfig {
            cassettes: 2,
            notes: vec![upper, lower],
            ..SimConfig::lcdm1000(upper)
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is inconsistent.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// No pseudo-terminal could be created.
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(#[from] serialport::Error),
    /// The state file could not be read or written.
    #[error("simulator state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the simulator thread: {0}")]
    Thread(std::io::Error),
}

/// Protocol-level counters (not persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Intact command frames received while powered.
    pub commands: u64,
    /// Note-moving commands executed (dispense, combined, test).
    pub dispense_commands: u64,
    /// NAKs sent (damaged frames and injected NAKs).
    pub naks_sent: u64,
    /// Response transmissions, resends included.
    pub responses_sent: u64,
    /// Times power came back (each sent noise on the line).
    pub power_ups: u64,
}

/// What the simulated machine has physically done, for assertions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCounters {
    /// Notes that left the machine through EXIT, all cassettes, since the state began. This
    /// is the cash a customer could have taken.
    pub delivered: u64,
    /// The same per cassette, upper first.
    pub delivered_per_cassette: Vec<u64>,
    /// Notes left per cassette.
    pub notes_left: Vec<u32>,
    /// Notes picked, ever.
    pub picked: u64,
    /// Notes in the reject tray.
    pub reject_tray: u32,
    /// Notes stuck in the path.
    pub in_path: u32,
    /// The device has power.
    pub powered: bool,
    /// Protocol counters.
    pub link: LinkStats,
}

/// State shared between the server thread and the handle.
struct SimState {
    mechanism: Mechanism,
    faults: Faults,
    stats: LinkStats,
}

struct Shared {
    state: Mutex<SimState>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic elsewhere must not hide the counters from the test that asserts on them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Creates a pty pair and serves the device side on a background thread.
    pub fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
        if !(1..=2).contains(&config.cassettes) {
            return Err(SimError::Config(format!(
                "an LCDM has 1 or 2 cassettes, not {}",
                config.cassettes
            )));
        }
        let state_error = |path: &PathBuf| {
            let path = path.clone();
            move |source| SimError::State { path, source }
        };
        let loaded = match &config.state_file {
            Some(path) => state_file::load(path).map_err(state_error(path))?,
            None => None,
        };
        let mechanism = match loaded {
            Some(mut m) => {
                if m.cassettes.len() != config.cassettes {
                    return Err(SimError::Config(format!(
                        "state file has {} cassette(s), configuration says {}",
                        m.cassettes.len(),
                        config.cassettes
                    )));
                }
                // Restarting the simulator is powering the device on again; the notes that
                // were in the path are still there.
                m.powered = true;
                tracing::info!(
                    in_path = m.in_path,
                    delivered = m.delivered(),
                    "simulator state loaded"
                );
                m
            }
            None => {
                if config.notes.len() != config.cassettes {
                    return Err(SimError::Config(format!(
                        "{} note count(s) given for {} cassette(s)",
                        config.notes.len(),
                        config.cassettes
                    )));
                }
                Mechanism::new(&config.notes, config.near_end_threshold)
            }
        };
        if let Some(path) = &config.state_file {
            state_file::save(path, &mechanism).map_err(state_error(path))?;
        }
        let (master, slave) = TTYPort::pair()?;
        let port_path = slave
            .name()
            .ok_or_else(|| SimError::Config("pseudo-terminal has no name".into()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(SimState {
                mechanism,
                faults: config.faults.clone(),
                stats: LinkStats::default(),
            }),
            stop: AtomicBool::new(false),
        });
        let server = server::Server::new(
            master,
            Arc::clone(&shared),
            server::ServerConfig {
                cassettes: config.cassettes,
                note_interval: config.note_interval,
                ack_timeout: config.ack_timeout,
                frame_timeout: config.frame_timeout,
                order: config.combined_field_order,
                rom_version: config.rom_version.clone(),
                state_file: config.state_file.clone(),
                faults_file: config.faults_file.clone(),
            },
        );
        let thread = std::thread::Builder::new()
            .name("lcdm-sim".into())
            .spawn(move || server.run())
            .map_err(SimError::Thread)?;
        tracing::info!(port = %port_path, cassettes = config.cassettes, "LCDM simulator serving");
        Ok(SimHandle {
            shared,
            thread: Some(thread),
            port_path,
            _slave: slave,
        })
    }
}

/// A running simulator: its port path, its counters, and knobs for faults.
///
/// Dropping the handle stops the simulator.
pub struct SimHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    port_path: String,
    /// Held open so the pty stays up between driver connections.
    _slave: TTYPort,
}

impl SimHandle {
    /// Path of the pty the driver opens (e.g. `/dev/pts/7`).
    pub fn port_path(&self) -> &str {
        &self.port_path
    }

    /// What the machine has physically done so far.
    pub fn counters(&self) -> SimCounters {
        let s = self.shared.lock();
        let m = &s.mechanism;
        SimCounters {
            delivered: m.delivered(),
            delivered_per_cassette: m.cassettes.iter().map(|c| c.delivered).collect(),
            notes_left: m.cassettes.iter().map(|c| c.notes).collect(),
            picked: m.picked,
            reject_tray: m.reject_tray,
            in_path: m.in_path,
            powered: m.powered,
            link: s.stats,
        }
    }

    /// A copy of the machine state.
    pub fn mechanism(&self) -> Mechanism {
        self.shared.lock().mechanism.clone()
    }

    /// The faults still pending (one-shot faults disappear once they strike).
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Edits the faults in place.
    pub fn update_faults(&self, edit: impl FnOnce(&mut Faults)) {
        edit(&mut self.shared.lock().faults);
    }

    /// Sets the notes in a cassette.
    pub fn set_notes(&self, cassette: CassetteId, notes: u32) {
        self.edit_cassette(cassette, |c| c.notes = notes);
    }

    /// Seats or removes a cassette.
    pub fn set_cassette_present(&self, cassette: CassetteId, present: bool) {
        self.edit_cassette(cassette, |c| c.present = present);
    }

    /// Seats or removes the reject tray.
    pub fn set_reject_tray_present(&self, present: bool) {
        self.shared.lock().mechanism.reject_tray_present = present;
    }

    /// Cuts the power now: the device goes silent, its state stays.
    pub fn power_off(&self) {
        self.shared.lock().mechanism.powered = false;
    }

    /// Restores power (after `power_off` or a `power_loss_after` fault).
    pub fn power_on(&self) {
        self.shared.lock().mechanism.powered = true;
    }

    /// Waits until `condition` holds for the counters, or `timeout` passes; returns whether
    /// it held.
    pub fn wait_for(&self, timeout: Duration, condition: impl Fn(&SimCounters) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(&self.counters()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Blocks until the simulator stops (it only stops when the handle is dropped, so this
    /// serves forever; used by the binary).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops the simulator and returns the final machine state.
    pub fn shutdown(mut self) -> Mechanism {
        self.stop();
        self.mechanism()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn edit_cassette(&self, cassette: CassetteId, edit: impl FnOnce(&mut mechanism::Cassette)) {
        let mut s = self.shared.lock();
        if let Some(c) = cassette
            .index()
            .and_then(|i| s.mechanism.cassettes.get_mut(i))
        {
            edit(c);
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
