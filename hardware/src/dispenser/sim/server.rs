//! The simulator's device side of the LCDM link: reads command frames from the pty master,
//! ACKs or NAKs them, runs the mechanism with real time between notes, sends responses and
//! resends them until the host ACKs (at most 3 sends without an answer, 3 resends after NAKs).
//! Power coming back puts a few noise bytes on the line, as a real device does at start-up.
//! A command that arrives while a response waits for its ACK is kept and run afterwards: it
//! does not stop the repeats, so a host that sends its next command too early can receive a
//! repeat of the previous response in its place.
//!
//! Shares the codec (`frame`, `message`) with the driver; paper handling is `mechanism`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serialport::{SerialPort, TTYPort};

use super::mechanism::{Run, Step, code_for, slot_index};
use super::{Shared, SimState, state_file};
use crate::dispenser::error::DeviceError;
use crate::dispenser::lcdm::frame::{self, ACK, Direction, FrameDecoder, NAK, RawFrame, Token};
use crate::dispenser::lcdm::message::{
    CMD_DISPENSE, CMD_DISPENSE_BOTH, CMD_DISPENSE_LOWER, CombinedFieldOrder, Command, Counts,
    ParseError, Response, Slot,
};

/// How often the loop wakes up to notice a stop request or a power change.
const POLL: Duration = Duration::from_millis(10);
/// Sends of a response with no answer from the host (manual: 3).
const SILENT_SENDS: u8 = 3;
/// Resends of a response after NAKs (manual: 3).
const NAK_RESENDS: u8 = 3;
/// What the line carries while a device powers up (no byte that starts a frame or answers).
const POWER_UP_NOISE: [u8; 5] = [0x00, 0xFF, 0xF0, 0x00, 0x80];

/// Fixed settings of the server loop.
#[derive(Clone, Debug)]
pub(super) struct ServerConfig {
    pub cassettes: usize,
    pub note_interval: Duration,
    pub ack_timeout: Duration,
    pub frame_timeout: Duration,
    pub order: CombinedFieldOrder,
    pub rom_version: String,
    pub state_file: Option<PathBuf>,
    pub faults_file: Option<PathBuf>,
}

/// How the host answered a response.
enum Reply {
    Ack,
    Nak,
    Silence,
}

pub(super) struct Server {
    port: TTYPort,
    shared: Arc<Shared>,
    config: ServerConfig,
    decoder: FrameDecoder,
    pending: VecDeque<RawFrame>,
    faults_file_stamp: Option<SystemTime>,
    /// Powered at the last look: power coming back sends [`POWER_UP_NOISE`].
    was_powered: bool,
}

impl Server {
    pub fn new(port: TTYPort, shared: Arc<Shared>, config: ServerConfig) -> Self {
        let decoder = FrameDecoder::with_timeout(Direction::ToDevice, config.frame_timeout);
        Server {
            port,
            shared,
            config,
            decoder,
            pending: VecDeque::new(),
            faults_file_stamp: None,
            was_powered: true,
        }
    }

    pub fn run(mut self) {
        let _ = self.port.set_timeout(POLL);
        let mut buf = [0u8; 256];
        while !self.stopping() {
            self.refresh_faults_file();
            self.notice_power();
            if let Some(frame) = self.pending.pop_front() {
                self.on_command(frame);
                continue;
            }
            match self.port.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => self.on_bytes(&buf[..n]),
                Err(e) if is_timeout(&e) => {
                    if let Some(fault) = self.decoder.expire(Instant::now()) {
                        self.on_token(fault);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "simulator read failed");
                    std::thread::sleep(POLL);
                }
            }
        }
        self.save_state();
        tracing::debug!("simulator stopped");
    }

    /// A device whose power comes back puts noise on the line before it listens.
    fn notice_power(&mut self) {
        let powered = self.lock().mechanism.powered;
        if powered && !self.was_powered {
            self.lock().stats.power_ups += 1;
            self.decoder.reset();
            self.write_raw(&POWER_UP_NOISE);
        }
        self.was_powered = powered;
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.shared.lock()
    }

    /// Powered and not playing dead.
    fn listening(&self) -> bool {
        let s = self.lock();
        s.mechanism.powered && !s.faults.no_answer
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        if !self.listening() {
            // Bytes sent to a dead device are lost.
            self.decoder.reset();
            return;
        }
        for token in self.decoder.push_bytes(bytes, Instant::now()) {
            self.on_token(token);
        }
    }

    fn on_token(&mut self, token: Token) {
        match token {
            Token::Frame(frame) => self.pending.push_back(frame),
            Token::Corrupt(fault) => {
                tracing::debug!(?fault, "damaged command, NAK");
                self.lock().stats.naks_sent += 1;
                self.write(&[NAK]);
            }
            Token::Ack | Token::Nak | Token::Stray(_) => {}
        }
    }

    fn on_command(&mut self, raw: RawFrame) {
        {
            let mut s = self.lock();
            if !s.mechanism.powered || s.faults.no_answer {
                return;
            }
            s.stats.commands += 1;
            if s.faults.nak_commands > 0 {
                s.faults.nak_commands -= 1;
                s.stats.naks_sent += 1;
                drop(s);
                tracing::debug!(cmd = raw.cmd, "injected NAK");
                self.write(&[NAK]);
                return;
            }
        }
        self.write(&[ACK]);
        let response = match Command::decode(&raw) {
            Ok(command) => {
                tracing::debug!(?command, "command");
                self.execute(command).map(|r| r.encode(self.config.order))
            }
            Err(ParseError::UnknownCommand(code)) => Some(frame::encode(
                Direction::FromDevice,
                code,
                &[code_for(Some(&DeviceError::UndefinedCommand)).0],
            )),
            Err(e) => {
                tracing::debug!(error = %e, "bad command data");
                Some(self.raw_refusal(raw.cmd, &DeviceError::NoteRequestError))
            }
        };
        self.save_state();
        if let Some(bytes) = response {
            self.send_response(&bytes);
        }
    }

    /// A response with no notes moved and `error`, for a command that moves notes.
    fn refusal(command: Command, error: &DeviceError) -> Response {
        let error = code_for(Some(error));
        match command {
            Command::DispenseBoth { .. } => Response::DispenseBoth {
                upper: Counts::default(),
                lower: Counts::default(),
                error,
            },
            Command::TestDispense { slot } => Response::TestDispense {
                slot,
                counts: Counts::default(),
                error,
            },
            Command::Dispense { slot, .. } => Response::Dispense {
                slot,
                counts: Counts::default(),
                error,
            },
            Command::Purge | Command::Status | Command::RomVersion => Response::Purge { error },
        }
    }

    /// A response with no notes moved and `error`, in the layout of command byte `cmd`, for
    /// command frames whose data could not be parsed.
    fn raw_refusal(&self, cmd: u8, error: &DeviceError) -> Vec<u8> {
        let error = code_for(Some(error));
        let response = match cmd {
            CMD_DISPENSE | CMD_DISPENSE_LOWER => Response::Dispense {
                slot: if cmd == CMD_DISPENSE {
                    Slot::Upper
                } else {
                    Slot::Lower
                },
                counts: Counts::default(),
                error,
            },
            CMD_DISPENSE_BOTH => Response::DispenseBoth {
                upper: Counts::default(),
                lower: Counts::default(),
                error,
            },
            other => return frame::encode(Direction::FromDevice, other, &[error.0]),
        };
        response.encode(self.config.order)
    }

    /// Runs a command; `None` when the device lost power and sends nothing.
    fn execute(&mut self, command: Command) -> Option<Response> {
        let (slots, test): (Vec<Slot>, bool) = match command {
            Command::Status => {
                let s = self.lock();
                return Some(Response::Status {
                    error: s.mechanism.status_error(),
                    sensors: s.mechanism.sensors(&s.faults),
                });
            }
            Command::RomVersion => {
                return Some(Response::RomVersion {
                    version: self.config.rom_version.clone().into_bytes(),
                });
            }
            Command::Purge => {
                let in_path = self.lock().mechanism.in_path;
                std::thread::sleep(self.config.note_interval * in_path.min(100));
                let error = self.lock().mechanism.purge();
                return Some(Response::Purge { error });
            }
            Command::Dispense { slot, .. } => (vec![slot], false),
            Command::DispenseBoth { .. } => (vec![Slot::Upper, Slot::Lower], false),
            Command::TestDispense { slot } => (vec![slot], true),
        };
        let undefined = slots
            .iter()
            .any(|s| slot_index(*s) >= self.config.cassettes);
        let blocked = {
            let s = self.lock();
            s.mechanism
                .latched_fault
                .clone()
                .or_else(|| (s.mechanism.in_path > 0).then_some(DeviceError::JamAtChk))
        };
        if undefined || blocked.is_some() {
            // Refuse before moving anything: wrong model, or notes still in the path.
            let error = if undefined {
                DeviceError::UndefinedCommand
            } else {
                blocked.unwrap_or(DeviceError::JamAtChk)
            };
            return Some(Self::refusal(command, &error));
        }
        let mut run = match command {
            Command::Dispense { slot, count } => {
                Run::dispense(vec![(slot_index(slot), u32::from(count.get()))])
            }
            Command::DispenseBoth { upper, lower } => Run::dispense(vec![
                (0, u32::from(upper.get())),
                (1, u32::from(lower.get())),
            ]),
            Command::TestDispense { slot } => Run::test(slot_index(slot)),
            _ => return None,
        };
        self.lock().stats.dispense_commands += 1;
        loop {
            if self.stopping() {
                return None;
            }
            let step = {
                let mut s = self.lock();
                let SimState {
                    mechanism, faults, ..
                } = &mut *s;
                if !mechanism.powered {
                    Step::PowerLost
                } else {
                    run.step(mechanism, faults)
                }
            };
            match step {
                Step::Exited | Step::Rejected => {
                    self.save_state();
                    std::thread::sleep(self.config.note_interval);
                }
                Step::PowerLost => {
                    self.save_state();
                    tracing::warn!("simulated power loss in the middle of a dispense");
                    return None;
                }
                Step::Stopped(error) => {
                    tracing::info!(%error, "dispense stopped by a fault");
                    break;
                }
                Step::Done => break,
            }
        }
        let s = self.lock();
        Some(match command {
            Command::DispenseBoth { .. } => run.response_both(&s.mechanism, &s.faults),
            _ => run.response_single(slots[0], test, &s.mechanism, &s.faults),
        })
    }

    fn send_response(&mut self, bytes: &[u8]) {
        let mut sends = 0u8;
        let mut naks = 0u8;
        loop {
            if !self.listening() || self.stopping() {
                return;
            }
            let mut out = bytes.to_vec();
            {
                let mut s = self.lock();
                if s.faults.corrupt_responses > 0 {
                    s.faults.corrupt_responses -= 1;
                    if let Some(bcc) = out.last_mut() {
                        *bcc ^= 0xFF;
                    }
                }
                s.stats.responses_sent += 1;
            }
            self.write(&out);
            sends += 1;
            match self.await_reply() {
                Reply::Ack => return,
                Reply::Nak if naks < NAK_RESENDS => naks += 1,
                Reply::Silence if sends < SILENT_SENDS => {}
                Reply::Nak | Reply::Silence => {
                    tracing::debug!(sends, naks, "host never took the response; giving up");
                    return;
                }
            }
        }
    }

    fn await_reply(&mut self) -> Reply {
        let deadline = Instant::now() + self.config.ack_timeout;
        let mut buf = [0u8; 64];
        loop {
            let now = Instant::now();
            if now >= deadline || self.stopping() {
                return Reply::Silence;
            }
            let _ = self.port.set_timeout((deadline - now).min(POLL));
            let n = match self.port.read(&mut buf) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "simulator read failed");
                    return Reply::Silence;
                }
            };
            if !self.listening() {
                return Reply::Silence;
            }
            // The host may send its ACK and its next command in one burst: keep every frame.
            // A command is no answer: it waits until this response is done.
            let mut reply = None;
            for token in self.decoder.push_bytes(&buf[..n], Instant::now()) {
                match token {
                    Token::Ack if self.ack_lost() => {}
                    Token::Ack => reply = reply.or(Some(Reply::Ack)),
                    Token::Nak => reply = reply.or(Some(Reply::Nak)),
                    Token::Frame(f) => self.pending.push_back(f),
                    Token::Corrupt(_) | Token::Stray(_) => {}
                }
            }
            if let Some(reply) = reply {
                return reply;
            }
        }
    }

    /// Whether an injected fault eats this ACK on the line.
    fn ack_lost(&self) -> bool {
        let mut s = self.lock();
        if s.faults.lose_acks == 0 {
            return false;
        }
        s.faults.lose_acks -= 1;
        tracing::debug!("injected loss of the host's ACK");
        true
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.lock().faults.line_noise {
            let mut noisy = vec![0xFF, 0x00, 0xFF];
            noisy.extend_from_slice(bytes);
            return self.write_raw(&noisy);
        }
        self.write_raw(bytes);
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.port.write_all(bytes).and_then(|_| self.port.flush()) {
            tracing::warn!(error = %e, "simulator write failed");
        }
    }

    fn save_state(&self) {
        if let Some(path) = &self.config.state_file {
            let m = self.lock().mechanism.clone();
            if let Err(e) = state_file::save(path, &m) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write simulator state");
            }
        }
    }

    /// Re-reads the faults file when it changed (binary only).
    fn refresh_faults_file(&mut self) {
        let Some(path) = &self.config.faults_file else {
            return;
        };
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if stamp.is_none() || stamp == self.faults_file_stamp {
            return;
        }
        self.faults_file_stamp = stamp;
        match state_file::load_faults(path) {
            Ok(faults) => {
                tracing::info!(?faults, "faults file loaded");
                self.lock().faults = faults;
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "bad faults file ignored"),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
