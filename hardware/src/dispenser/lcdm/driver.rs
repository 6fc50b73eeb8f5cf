//! The LCDM driver: the thin I/O shell that runs the pure link and batch state machines over
//! a serial port and implements `Dispenser`.
//!
//! Everything here is plumbing (reads with deadlines, writes, sleeps between batches,
//! journal writes); decisions are made in `link` and `batch`.
//!
//! The journal record names each dispense by its caller's reference and says when the
//! command of the batch in flight reached the serial line. After a restart with a batch in
//! flight, `recover_last` first listens for the device's answer to that command (waiting on
//! the line, or arriving before the batch's deadline): that answer, applied by
//! `DispenseRun::settle_late`, is the best evidence of what left the machine.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serialport::SerialPort;

use super::batch::DispenseRun;
use super::config::LcdmConfig;
use super::frame::{ACK, Direction, FrameDecoder, Token};
use super::link::{LinkFailure, RepeatWatch, Transaction};
use super::message::{Command, ErrorCode, Response, Slot};
use crate::dispenser::error::{DeviceError, DispenserError};
use crate::dispenser::journal::{Journal, LastDispense, unix_ms};
use crate::dispenser::outcome::{
    CassetteTally, DispenseOutcome, DispenseResult, Recovery, StopReason, TestDispenseOutcome,
};
use crate::dispenser::request::{CassetteId, DispenseRequest};
use crate::dispenser::status::{CassetteState, CassetteStatus, DispenserStatus, Sensors};
use crate::dispenser::{Dispenser, crash_point};

/// A Puloon LCDM-1000/2000 on a serial port.
pub struct LcdmDispenser {
    config: LcdmConfig,
    port: Box<dyn SerialPort>,
    journal: Option<Journal>,
    last: Option<LastDispense>,
    /// The reference of the dispense in progress (journalled with every record of it).
    reference: Option<String>,
    /// Last state seen per cassette in dispense responses; the status command cannot report
    /// near end for the lower cassette.
    seen_states: Vec<CassetteState>,
    /// After a note-moving command: its response may still be repeated.
    repeats: Option<RepeatWatch>,
}

/// What the device said about itself when asked ([`LcdmDispenser::identify`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The ROM version string.
    pub rom_version: String,
    /// Its status.
    pub status: DispenserStatus,
}

/// A port failure inside a transaction, and whether a complete command frame had been
/// written before it.
struct PortFailure {
    source: io::Error,
    command_written: bool,
}

impl LcdmDispenser {
    /// Opens the configured port and reads the journal, if one is configured.
    pub fn open(config: LcdmConfig) -> Result<Self, DispenserError> {
        config.validate()?;
        let port = serialport::new(&config.port, config.baud_rate)
            .data_bits(config.serial_data_bits())
            .parity(config.serial_parity())
            .stop_bits(config.serial_stop_bits())
            .flow_control(serialport::FlowControl::None)
            .timeout(config.response_timeout())
            .open()
            .map_err(|source| DispenserError::Open {
                path: config.port.clone(),
                source,
            })?;
        Self::with_port(config, port)
    }

    /// Opens the port like [`LcdmDispenser::open`], then checks that a device of the
    /// configured family answers on it ([`LcdmDispenser::identify`]): a silent line or a
    /// wrong model shows up now, as [`DispenserError::NotAnswering`], instead of as a
    /// dispense in doubt after the full dispense timeout. Skipped while the last dispense
    /// awaits recovery: recovery first listens for the device's late answer to the batch in
    /// flight, which a status command would consume.
    pub fn open_checked(config: LcdmConfig) -> Result<Self, DispenserError> {
        let mut driver = Self::open(config)?;
        if !driver
            .last
            .as_ref()
            .is_some_and(LastDispense::blocks_dispensing)
        {
            driver.identify()?;
        }
        Ok(driver)
    }

    /// Asks the device for its status and ROM version. A link failure (no ACK, no or an
    /// unreadable or senseless answer) becomes [`DispenserError::NotAnswering`], naming the
    /// port and the configured model.
    pub fn identify(&mut self) -> Result<Identity, DispenserError> {
        let answer = self.status().and_then(|status| {
            Ok(Identity {
                rom_version: self.rom_version()?,
                status,
            })
        });
        match answer {
            Ok(identity) => {
                tracing::info!(
                    port = %self.config.port,
                    model = ?self.config.model,
                    rom_version = %identity.rom_version,
                    ready = identity.status.is_ready(),
                    "the dispenser answers"
                );
                Ok(identity)
            }
            Err(
                e @ (DispenserError::NoAcknowledge { .. }
                | DispenserError::NoResponse { .. }
                | DispenserError::UnreadableResponse { .. }
                | DispenserError::MalformedResponse(_)
                | DispenserError::CommandRejected { .. }),
            ) => Err(DispenserError::NotAnswering {
                path: self.config.port.clone(),
                model: format!("{:?}", self.config.model),
                source: Box::new(e),
            }),
            Err(e) => Err(e),
        }
    }

    /// Uses an already open port (the line settings in `config` are then not applied).
    pub fn with_port(
        config: LcdmConfig,
        port: Box<dyn SerialPort>,
    ) -> Result<Self, DispenserError> {
        config.validate()?;
        let journal = config.journal.clone().map(Journal::new);
        let last = match &journal {
            Some(j) => j.load()?,
            None => None,
        };
        if let Some(last) = last.as_ref().filter(|l| l.blocks_dispensing()) {
            tracing::warn!(
                outcome = ?last.outcome.result,
                "journal: the last dispense needs recovery before the next one"
            );
        }
        let cassettes = config.model.cassettes();
        tracing::info!(port = %config.port, model = ?config.model, "LCDM dispenser ready");
        Ok(LcdmDispenser {
            config,
            port,
            journal,
            last,
            reference: None,
            seen_states: vec![CassetteState::Unknown; cassettes],
            repeats: None,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &LcdmConfig {
        &self.config
    }

    /// The last dispense as this driver knows it (from memory or the journal).
    pub fn last_dispense(&self) -> Option<&LastDispense> {
        self.last.as_ref()
    }

    /// Reads the ROM version string.
    pub fn rom_version(&mut self) -> Result<String, DispenserError> {
        match self.command(Command::RomVersion)? {
            Response::RomVersion { version } => {
                Ok(String::from_utf8_lossy(&version).trim().to_string())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Runs one command to completion and maps link failures to errors.
    fn command(&mut self, command: Command) -> Result<Response, DispenserError> {
        match self.transact(command, false) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => Err(link_error(failure)),
            Err(failure) => Err(self.io_error(failure.source)),
        }
    }

    /// Runs one transaction over the port. With `batch`, the journal record of the batch in
    /// flight is stamped with the moment its command frame was handed to the serial line.
    fn transact(
        &mut self,
        command: Command,
        batch: bool,
    ) -> Result<Result<Response, LinkFailure>, PortFailure> {
        let mechanical = command.is_mechanical();
        if mechanical {
            self.wait_out_repeats().map_err(|source| PortFailure {
                source,
                command_written: false,
            })?;
        }
        self.drain_stale_input().map_err(|source| PortFailure {
            source,
            command_written: false,
        })?;
        let result = self.run_transaction(command, batch);
        if mechanical {
            // Whatever came of it, the device may still send or repeat an answer.
            self.repeats = Some(RepeatWatch::new(self.config.repeat_wait(), Instant::now()));
        }
        result
    }

    fn run_transaction(
        &mut self,
        command: Command,
        batch: bool,
    ) -> Result<Result<Response, LinkFailure>, PortFailure> {
        let timeout = match command {
            Command::Purge => self.config.purge_timeout(),
            c if c.is_mechanical() => self.config.dispense_timeout(),
            _ => self.config.response_timeout(),
        };
        let mut tx = Transaction::new(command, self.config.link(), timeout, Instant::now());
        let mut command_written = false;
        let mut buf = [0u8; 256];
        loop {
            while let Some(bytes) = tx.poll_transmit() {
                if let Err(source) = self.port.write_all(&bytes).and_then(|_| self.port.flush()) {
                    if tx.is_done() {
                        // Only our final ACK was lost; the device will repeat the response a
                        // few times and give up. The answer is already in hand.
                        tracing::warn!(error = %source, "could not ACK the response");
                        break;
                    }
                    return Err(PortFailure {
                        source,
                        command_written,
                    });
                }
                if bytes.len() > 1 && !command_written && batch {
                    self.note_handed();
                    crash_point("after_command");
                }
                command_written |= bytes.len() > 1;
            }
            for stale in tx.take_stale() {
                tracing::warn!(cmd = stale.cmd, data = ?stale.data, "late response ignored");
            }
            if tx.is_done() {
                let outcome = tx.take_outcome();
                return Ok(outcome.unwrap_or(Err(LinkFailure::NoResponse {
                    acknowledged: false,
                })));
            }
            let Some(deadline) = tx.poll_timeout() else {
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                tx.handle_timeout(now);
                continue;
            }
            let _ = self.port.set_timeout(deadline - now);
            match self.port.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::trace!(bytes = ?&buf[..n], "rx");
                    tx.handle_input(&buf[..n], Instant::now());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    tx.handle_timeout(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PortFailure {
                        source,
                        command_written,
                    });
                }
            }
        }
    }

    /// Before a note-moving command: listens until the line has been quiet for the repeat
    /// wait since the last response to one, ACKing the repeats heard meanwhile, so that a
    /// repeat of the last batch's response can never pass for the next batch's answer.
    fn wait_out_repeats(&mut self) -> io::Result<()> {
        let Some(mut watch) = self.repeats.take() else {
            return Ok(());
        };
        let frame_timeout = self.config.link().frame_timeout;
        let mut decoder = FrameDecoder::with_timeout(Direction::FromDevice, frame_timeout);
        let mut buf = [0u8; 256];
        loop {
            let now = Instant::now();
            let waiting = self.port.bytes_to_read().map_err(io::Error::other)? > 0;
            if now >= watch.quiet_at() && !waiting && !decoder.in_frame() {
                if watch.repeats() > 0 {
                    tracing::info!(repeats = watch.repeats(), "the device's repeats are over");
                }
                return Ok(());
            }
            let wait = watch.quiet_at().saturating_duration_since(now);
            let _ = self
                .port
                .set_timeout(wait.clamp(Duration::from_millis(1), frame_timeout));
            let n = match self.port.read(&mut buf) {
                Ok(n) => n,
                Err(e) if nothing_read(&e) => {
                    let _ = decoder.expire(Instant::now());
                    continue;
                }
                Err(e) => return Err(e),
            };
            for token in decoder.push_bytes(&buf[..n], Instant::now()) {
                let Token::Frame(frame) = token else {
                    continue;
                };
                self.port.write_all(&[ACK])?;
                self.port.flush()?;
                tracing::warn!(
                    cmd = frame.cmd,
                    data = ?frame.data,
                    "a repeated response (our ACK was lost) taken and ignored"
                );
                if !watch.heard(Instant::now()) {
                    return Err(io::Error::other(
                        "the device keeps sending frames: more repeats than an LCDM sends",
                    ));
                }
            }
        }
    }

    /// Reads whatever is waiting before a new command: late responses to an earlier
    /// transaction are ACKed (so the device stops repeating them) and logged, never mistaken
    /// for the next command's answer.
    fn drain_stale_input(&mut self) -> io::Result<()> {
        let mut decoder =
            FrameDecoder::with_timeout(Direction::FromDevice, self.config.link().frame_timeout);
        let mut buf = [0u8; 256];
        while self.port.bytes_to_read().map_err(io::Error::other)? > 0 {
            let n = self.port.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for token in decoder.push_bytes(&buf[..n], Instant::now()) {
                if let Token::Frame(frame) = token {
                    tracing::warn!(cmd = frame.cmd, data = ?frame.data, "late response before a new command ignored");
                    self.port.write_all(&[ACK])?;
                }
            }
        }
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> DispenserError {
        DispenserError::Io {
            path: self.config.port.clone(),
            source,
        }
    }

    /// Stamps the record of the batch in flight with the moment its command reached the
    /// line. A failed write leaves the earlier record, which already says "in doubt".
    fn note_handed(&mut self) {
        let Some(mut record) = self.last.clone() else {
            return;
        };
        record.handed_at_ms = Some(unix_ms());
        if let Err(e) = self.store_last(record) {
            tracing::warn!(error = %e, "cannot journal when the batch was sent");
        }
    }

    /// A record of `outcome` for the dispense in progress.
    fn record(&self, outcome: DispenseOutcome) -> LastDispense {
        LastDispense::new(self.reference.clone(), outcome)
    }

    /// After a restart with a batch in flight: reads the device's answer to that batch if it
    /// waits on the line or arrives before the batch's deadline (the dispense timeout after
    /// its command was sent), ACKs it, and settles the record with it. Returns whether it did.
    fn settle_from_late_answer(&mut self) -> Result<bool, DispenserError> {
        let Some(last) = self.last.clone().filter(|l| !l.recovered) else {
            return Ok(false);
        };
        let Some(run) = DispenseRun::resume(&last.outcome, self.config.max_notes_per_batch) else {
            return Ok(false);
        };
        let now = unix_ms();
        let timeout = u64::try_from(self.config.dispense_timeout().as_millis()).unwrap_or(u64::MAX);
        let since = last.handed_at_ms.unwrap_or(last.written_at_ms);
        // A clock that jumped back must not stretch the wait past one dispense timeout.
        let deadline = since
            .saturating_add(timeout)
            .min(now.saturating_add(timeout));
        tracing::info!(
            reference = ?last.reference,
            wait_ms = deadline.saturating_sub(now),
            "recovery: listening for the device's answer to the batch in flight"
        );
        let mut decoder =
            FrameDecoder::with_timeout(Direction::FromDevice, self.config.link().frame_timeout);
        let mut buf = [0u8; 256];
        loop {
            let now = unix_ms();
            let waiting = self
                .port
                .bytes_to_read()
                .map_err(|e| self.io_error(io::Error::other(e)))?
                > 0;
            if now >= deadline && !waiting && !decoder.in_frame() {
                tracing::warn!("recovery: no answer to the batch in flight");
                return Ok(false);
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).clamp(10, 200));
            let _ = self.port.set_timeout(wait);
            let n = match self.port.read(&mut buf) {
                Ok(n) => n,
                Err(e) if nothing_read(&e) => {
                    if let Some(fault) = decoder.expire(Instant::now()) {
                        tracing::debug!(?fault, "recovery: damaged bytes on the line");
                    }
                    continue;
                }
                Err(e) => return Err(self.io_error(e)),
            };
            for token in decoder.push_bytes(&buf[..n], Instant::now()) {
                let Token::Frame(frame) = token else {
                    continue;
                };
                // An intact frame is ACKed whatever it says, so the device stops repeating it.
                self.port
                    .write_all(&[ACK])
                    .and_then(|_| self.port.flush())
                    .map_err(|e| self.io_error(e))?;
                let settled = Response::decode(&frame, self.config.combined_field_order)
                    .ok()
                    .and_then(|response| run.clone().settle_late(&response));
                match settled {
                    Some(outcome) => {
                        tracing::warn!(
                            reference = ?last.reference,
                            cassettes = ?outcome.cassettes,
                            result = ?outcome.result,
                            "recovery: the device's late answer settles the batch in flight"
                        );
                        self.store_last(LastDispense {
                            handed_at_ms: last.handed_at_ms,
                            ..LastDispense::new(last.reference.clone(), outcome)
                        })?;
                        return Ok(true);
                    }
                    None => tracing::warn!(
                        cmd = frame.cmd,
                        data = ?frame.data,
                        "recovery: a late frame that does not answer the batch in flight"
                    ),
                }
            }
        }
    }

    fn store_last(&mut self, record: LastDispense) -> Result<(), DispenserError> {
        let result = match &self.journal {
            Some(j) => j.store(&record),
            None => Ok(()),
        };
        self.last = Some(record);
        result
    }

    fn run_dispense(&mut self, run: &mut DispenseRun) -> Result<(), DispenserError> {
        let mut first = true;
        while let Some(command) = run.next_command() {
            if !first {
                std::thread::sleep(self.config.batch_pause());
            }
            first = false;
            // Journal first: if we die after sending, the record already says "in doubt".
            let snapshot = run.snapshot();
            if let Err(e) = self.store_last(self.record(snapshot)) {
                tracing::error!(error = %e, "cannot journal the next batch; not sending it");
                run.abandon_in_flight();
                self.last = Some(self.record(run.snapshot()));
                if run.batches_done() == 0 {
                    return Err(e);
                }
                break;
            }
            tracing::debug!(?command, "sending batch");
            match self.transact(command, true) {
                Ok(Ok(response)) => run.on_response(&response),
                Ok(Err(failure)) => {
                    tracing::warn!(?failure, "batch got no usable answer");
                    run.on_failure(&failure);
                }
                Err(PortFailure {
                    source,
                    command_written: false,
                }) if run.batches_done() == 0 => {
                    run.abandon_in_flight();
                    self.record_final(run);
                    return Err(self.io_error(source));
                }
                Err(PortFailure { source, .. }) => run.on_io_error(source.to_string()),
            }
            if !run.is_finished() {
                // Between batches the counts are exact; keep the record honest.
                let _ = self.store_last(self.record(run.snapshot()));
                crash_point("between_batches");
            }
        }
        Ok(())
    }

    fn record_final(&mut self, run: &DispenseRun) -> DispenseOutcome {
        let outcome = run.snapshot();
        for tally in &outcome.cassettes {
            if let Some(slot) = tally
                .cassette
                .index()
                .and_then(|i| self.seen_states.get_mut(i))
                && tally.state != CassetteState::Unknown
            {
                *slot = tally.state;
            }
        }
        if let Err(e) = self.store_last(self.record(outcome.clone())) {
            tracing::error!(error = %e, "cannot journal the dispense outcome");
        }
        outcome
    }

    fn slot_for(&self, cassette: CassetteId) -> Result<Slot, DispenserError> {
        Slot::from_cassette(cassette)
            .filter(|_| cassette.index().is_some_and(|i| i < self.cassette_count()))
            .ok_or_else(|| {
                DispenserError::InvalidRequest(format!(
                    "{cassette} does not exist on an {:?}",
                    self.config.model
                ))
            })
    }
}

impl Dispenser for LcdmDispenser {
    fn cassette_count(&self) -> usize {
        self.config.model.cassettes()
    }

    fn status(&mut self) -> Result<DispenserStatus, DispenserError> {
        match self.command(Command::Status)? {
            Response::Status { error, sensors } => {
                Ok(status_from_report(&self.seen_states, error, sensors))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn dispense(
        &mut self,
        reference: &str,
        request: &DispenseRequest,
    ) -> Result<DispenseOutcome, DispenserError> {
        if self
            .last
            .as_ref()
            .is_some_and(LastDispense::blocks_dispensing)
        {
            return Err(DispenserError::RecoveryRequired);
        }
        let mut run = DispenseRun::new(
            request,
            self.cassette_count(),
            self.config.max_notes_per_batch,
        )?;
        tracing::info!(reference, notes = ?request.notes, "dispense");
        self.reference = Some(reference.to_owned());
        self.run_dispense(&mut run)?;
        let outcome = self.record_final(&run);
        match &outcome.result {
            DispenseResult::Completed => {
                tracing::info!(cassettes = ?outcome.cassettes, "dispense completed")
            }
            DispenseResult::Stopped { reason } => {
                tracing::warn!(?reason, cassettes = ?outcome.cassettes, "dispense stopped")
            }
            DispenseResult::InDoubt { in_flight, reason } => tracing::error!(
                ?reason, in_flight = ?in_flight.notes, cassettes = ?outcome.cassettes,
                "dispense IN DOUBT: recover_last, then reconcile the cash"
            ),
        }
        if let DispenseResult::Stopped {
            reason: StopReason::CommandRejected { sends },
        } = outcome.result
            && run.batches_done() == 0
        {
            // Nothing was executed: keep the promise that Err means no note moved.
            return Err(DispenserError::CommandRejected { sends });
        }
        Ok(outcome)
    }

    fn purge(&mut self) -> Result<(), DispenserError> {
        match self.command(Command::Purge)? {
            Response::Purge { error } => match error.fault() {
                None => Ok(()),
                Some(fault) => Err(DispenserError::Device(fault)),
            },
            other => Err(unexpected(&other)),
        }
    }

    fn test_dispense(
        &mut self,
        cassette: CassetteId,
    ) -> Result<TestDispenseOutcome, DispenserError> {
        let slot = self.slot_for(cassette)?;
        match self.command(Command::TestDispense { slot })? {
            Response::TestDispense {
                slot: answered,
                counts,
                error,
            } if answered == slot => {
                let fault = error.fault();
                let state = match &fault {
                    Some(DeviceError::BillEnd { .. }) => CassetteState::Empty,
                    Some(DeviceError::CassetteNotRecognised { .. }) => CassetteState::Missing,
                    _ if counts.near_end => CassetteState::NearEnd,
                    _ => CassetteState::Normal,
                };
                Ok(TestDispenseOutcome {
                    tally: CassetteTally {
                        cassette,
                        requested: 1,
                        picked: u32::from(counts.chk),
                        exited: u32::from(counts.exit),
                        rejected: u32::from(counts.rejected),
                        state,
                    },
                    error: fault,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    fn recover_last(&mut self) -> Result<Recovery, DispenserError> {
        let handed_at_ms = self
            .last
            .as_ref()
            .filter(|l| l.outcome.is_in_doubt())
            .and_then(|l| l.handed_at_ms);
        let late_answer = self.settle_from_late_answer()?;
        let status_before = self.status()?;
        let last = self.last.clone();
        let must_purge = status_before.notes_in_path
            || status_before
                .error
                .as_ref()
                .is_some_and(DeviceError::leaves_notes_in_path)
            || last.as_ref().is_some_and(LastDispense::blocks_dispensing);
        let (purged, purge_error) = if must_purge {
            tracing::info!(
                notes_in_path = status_before.notes_in_path,
                "recovery: purging"
            );
            match self.purge() {
                Ok(()) => (true, None),
                Err(DispenserError::Device(fault)) => (true, Some(fault)),
                Err(other) => return Err(other),
            }
        } else {
            (false, None)
        };
        let status_after = if purged {
            self.status()?
        } else {
            status_before.clone()
        };
        let recovery = Recovery {
            last: last.as_ref().map(|l| l.outcome.clone()),
            last_reference: last.as_ref().and_then(|l| l.reference.clone()),
            handed_at_ms,
            late_answer,
            status_before,
            purged,
            purge_error,
            status_after,
        };
        if recovery.machine_clear() {
            if let Some(last) = last {
                self.store_last(LastDispense {
                    recovered: true,
                    ..last
                })?;
            }
            tracing::info!("recovery: machine clear");
        } else {
            tracing::error!(status = ?recovery.status_after, "recovery: machine still not clear; call service");
        }
        Ok(recovery)
    }
}

/// Builds a status report from the LCDM status bytes.
///
/// The sensor bits describe the upper cassette only; the lower cassette's state comes from
/// the error byte, else from the last dispense response that mentioned it.
fn status_from_report(
    seen: &[CassetteState],
    error: ErrorCode,
    sensors: Sensors,
) -> DispenserStatus {
    let fault = error.fault();
    let cassettes = seen
        .iter()
        .enumerate()
        .filter_map(|(i, seen)| CassetteId::from_index(i).map(|c| (c, *seen)))
        .map(|(cassette, seen)| {
            let state = match &fault {
                Some(DeviceError::CassetteNotRecognised { cassette: c }) if *c == cassette => {
                    CassetteState::Missing
                }
                Some(DeviceError::BillEnd { cassette: c }) if *c == cassette => {
                    CassetteState::Empty
                }
                _ if cassette == CassetteId::UPPER && !sensors.cassette_in_place => {
                    CassetteState::Missing
                }
                _ if cassette == CassetteId::UPPER && sensors.near_end => CassetteState::NearEnd,
                _ if cassette == CassetteId::UPPER => CassetteState::Normal,
                _ if seen == CassetteState::NearEnd => CassetteState::NearEnd,
                _ => CassetteState::Normal,
            };
            CassetteStatus { cassette, state }
        })
        .collect();
    DispenserStatus {
        cassettes,
        error: fault,
        notes_in_path: sensors.notes_in_path(),
        reject_tray_present: !sensors.reject_tray_absent,
        sensors,
    }
}

/// A read that ended without data and without a port failure: timed out or interrupted.
fn nothing_read(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn link_error(failure: LinkFailure) -> DispenserError {
    match failure {
        LinkFailure::Rejected { sends } => DispenserError::CommandRejected { sends },
        LinkFailure::NoAcknowledge { sends } => DispenserError::NoAcknowledge { sends },
        LinkFailure::NoResponse { acknowledged } => DispenserError::NoResponse { acknowledged },
        LinkFailure::Unreadable { naks } => DispenserError::UnreadableResponse { naks },
        LinkFailure::Malformed(e) => DispenserError::MalformedResponse(e.to_string()),
    }
}

fn unexpected(response: &Response) -> DispenserError {
    DispenserError::MalformedResponse(format!(
        "response {:#04x} does not answer the command sent",
        response.code()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensors() -> Sensors {
        Sensors {
            cassette_in_place: true,
            ..Sensors::default()
        }
    }

    #[test]
    fn status_of_a_ready_two_cassette_device() {
        let s = status_from_report(
            &[CassetteState::Unknown, CassetteState::Unknown],
            ErrorCode::GOOD,
            sensors(),
        );
        assert!(s.is_ready());
        assert_eq!(s.cassette(CassetteId::UPPER), CassetteState::Normal);
        assert_eq!(s.cassette(CassetteId::LOWER), CassetteState::Normal);
    }

    #[test]
    fn status_maps_sensors_and_faults_to_cassette_states() {
        let one = [CassetteState::Unknown];
        let s = status_from_report(
            &one,
            ErrorCode::GOOD,
            Sensors {
                near_end: true,
                ..sensors()
            },
        );
        assert_eq!(s.cassette(CassetteId::UPPER), CassetteState::NearEnd);
        assert!(s.is_ready());

        let s = status_from_report(&one, ErrorCode::GOOD, Sensors::default());
        assert_eq!(s.cassette(CassetteId::UPPER), CassetteState::Missing);
        assert!(!s.is_ready());

        let s = status_from_report(&one, ErrorCode(0x38), sensors());
        assert_eq!(s.cassette(CassetteId::UPPER), CassetteState::Empty);
        assert_eq!(
            s.error,
            Some(DeviceError::BillEnd {
                cassette: CassetteId::UPPER
            })
        );

        let two = [CassetteState::Normal, CassetteState::NearEnd];
        let s = status_from_report(&two, ErrorCode::GOOD, sensors());
        assert_eq!(s.cassette(CassetteId::LOWER), CassetteState::NearEnd);
        let s = status_from_report(&two, ErrorCode(0x46), sensors());
        assert_eq!(s.cassette(CassetteId::LOWER), CassetteState::Missing);
        assert_eq!(s.cassette(CassetteId::UPPER), CassetteState::Normal);
        let s = status_from_report(&two, ErrorCode(0x40), sensors());
        assert_eq!(s.cassette(CassetteId::LOWER), CassetteState::Empty);
    }

    #[test]
    fn status_reports_notes_in_path_and_reject_tray() {
        let s = status_from_report(
            &[CassetteState::Unknown],
            ErrorCode(0x33),
            Sensors {
                chk1: true,
                div1: true,
                reject_tray_absent: true,
                ..sensors()
            },
        );
        assert!(s.notes_in_path);
        assert!(!s.reject_tray_present);
        assert_eq!(s.error, Some(DeviceError::JamAtChk));
        assert!(!s.is_ready());
    }

    #[test]
    fn link_failures_map_to_typed_errors() {
        assert!(matches!(
            link_error(LinkFailure::Rejected { sends: 4 }),
            DispenserError::CommandRejected { sends: 4 }
        ));
        assert!(matches!(
            link_error(LinkFailure::NoAcknowledge { sends: 4 }),
            DispenserError::NoAcknowledge { sends: 4 }
        ));
        assert!(matches!(
            link_error(LinkFailure::NoResponse { acknowledged: true }),
            DispenserError::NoResponse { acknowledged: true }
        ));
        assert!(matches!(
            link_error(LinkFailure::Unreadable { naks: 3 }),
            DispenserError::UnreadableResponse { naks: 3 }
        ));
    }
}
