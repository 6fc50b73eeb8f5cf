//! LCDM link rules as a pure state machine: one command/response transaction with ACK/NAK,
//! resends and timeouts.
//!
//! No port, clock or thread: the shell feeds received bytes and the current `Instant`, asks
//! when to wake up next, and writes whatever `poll_transmit` hands out (in the style of
//! quinn-proto). What a response *means* is decided by the caller.
//!
//! Rules implemented:
//! - the device ACKs a command or NAKs it; after a NAK the command is resent, up to
//!   `command_sends` sends in all;
//! - commands that move notes are never resent because of silence, only after an explicit NAK
//!   (a missing ACK may be a lost ACK, and a resent dispense would pay twice); safe commands
//!   (status, ROM version, purge) are resent on silence too, except a purge the device ACKed
//!   (one purge timeout bounds a recovery on a device that went silent);
//! - every intact response is ACKed; a damaged one is NAKed so the device resends it, up to
//!   `response_naks` times;
//! - a frame must complete within the frame timeout; stray bytes are skipped;
//! - intact responses to other commands (late answers to an earlier transaction) are ACKed and
//!   set aside, never taken for this command's answer;
//! - a device that did not hear the host's ACK repeats its response after its ACK wait, up to
//!   3 sends. A repeat carries the command code of the response and no sequence number, so
//!   a repeated dispense response arriving after the next dispense command would pass for
//!   that command's answer: [`RepeatWatch`] says when the line has been quiet long enough
//!   to send the next note-moving command.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::{ACK, Direction, FrameDecoder, FrameFault, NAK, RawFrame, Token};
use super::message::{CombinedFieldOrder, Command, ParseError, Response};

/// Link timing and retry limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Time a whole frame may take (manual: 200 ms).
    pub frame_timeout: Duration,
    /// Time the device has to ACK a command (manual: 200–500 ms).
    pub ack_timeout: Duration,
    /// Sends of a command in all, first one included (manual: first send + 3 resends).
    pub command_sends: u8,
    /// NAKs the host may send for damaged copies of one response (manual: 3).
    pub response_naks: u8,
    /// Field order of the combined (0x56) response.
    pub combined_order: CombinedFieldOrder,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            frame_timeout: Duration::from_millis(200),
            ack_timeout: Duration::from_millis(500),
            command_sends: 4,
            response_naks: 3,
            combined_order: CombinedFieldOrder::default(),
        }
    }
}

/// Why a transaction ended without a usable response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkFailure {
    /// The last send was NAKed and no sends were left. For commands that move notes this
    /// means the device executed none of the sends (they are resent only after a NAK).
    Rejected {
        /// Sends in all.
        sends: u8,
    },
    /// A safe-to-resend command got neither ACK nor response on any send.
    NoAcknowledge {
        /// Sends in all.
        sends: u8,
    },
    /// No response arrived in time; the command may have been executed.
    NoResponse {
        /// Whether the device had ACKed the command.
        acknowledged: bool,
    },
    /// Every copy of the response was damaged.
    Unreadable {
        /// NAKs sent.
        naks: u8,
    },
    /// The response frame was intact but not understood.
    Malformed(ParseError),
}

impl LinkFailure {
    /// True when the device certainly did not execute a note-moving command.
    pub fn certainly_not_executed(&self) -> bool {
        matches!(self, LinkFailure::Rejected { .. })
    }
}

/// Where the transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitAck {
        deadline: Instant,
    },
    AwaitResponse {
        deadline: Instant,
        acknowledged: bool,
    },
    Done,
}

/// One command and its response.
#[derive(Debug)]
pub struct Transaction {
    command: Command,
    frame: Vec<u8>,
    config: LinkConfig,
    response_timeout: Duration,
    decoder: FrameDecoder,
    state: State,
    sends: u8,
    naks_sent: u8,
    transmit: VecDeque<Vec<u8>>,
    outcome: Option<Result<Response, LinkFailure>>,
    stale: Vec<RawFrame>,
}

impl Transaction {
    /// Starts a transaction at `now`; the command frame is ready in `poll_transmit`.
    ///
    /// `response_timeout` is how long the device may work on the command after ACKing it.
    pub fn new(
        command: Command,
        config: LinkConfig,
        response_timeout: Duration,
        now: Instant,
    ) -> Self {
        let frame = command.encode();
        let mut t = Transaction {
            command,
            frame: frame.clone(),
            config,
            response_timeout,
            decoder: FrameDecoder::with_timeout(Direction::FromDevice, config.frame_timeout),
            state: State::Done,
            sends: 0,
            naks_sent: 0,
            transmit: VecDeque::new(),
            outcome: None,
            stale: Vec::new(),
        };
        t.send(now);
        t
    }

    /// The command being carried.
    pub fn command(&self) -> Command {
        self.command
    }

    /// Bytes to write to the line, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// When `handle_timeout` must be called if no input arrives first; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::AwaitAck { deadline } | State::AwaitResponse { deadline, .. } => deadline,
            State::Done => return None,
        };
        Some(match self.decoder.deadline() {
            Some(frame_deadline) => frame_deadline.min(state_deadline),
            None => state_deadline,
        })
    }

    /// True once the transaction has an outcome (remaining transmits, such as the final ACK,
    /// should still be written).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The outcome, once done.
    pub fn take_outcome(&mut self) -> Option<Result<Response, LinkFailure>> {
        self.outcome.take()
    }

    /// Intact frames that answered some other command (ACKed and set aside).
    pub fn take_stale(&mut self) -> Vec<RawFrame> {
        std::mem::take(&mut self.stale)
    }

    /// True if the device acknowledged the command (or answered it, which implies it).
    pub fn acknowledged(&self) -> bool {
        match self.state {
            State::AwaitResponse { acknowledged, .. } => acknowledged,
            State::AwaitAck { .. } => false,
            State::Done => matches!(self.outcome, Some(Ok(_))),
        }
    }

    /// Feeds bytes received at `now`.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        for token in self.decoder.push_bytes(bytes, now) {
            if self.state == State::Done {
                // Answer anything intact so the device stops repeating it.
                if let Token::Frame(frame) = token {
                    self.transmit.push_back(vec![ACK]);
                    self.stale.push(frame);
                }
                continue;
            }
            self.on_token(token, now);
        }
    }

    /// Advances time to `now`: expires partial frames and waits.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(token) = self.decoder.expire(now) {
            self.on_token(token, now);
        }
        match self.state {
            State::AwaitAck { deadline } if now >= deadline => {
                if self.command.resend_on_silence() {
                    if self.sends < self.config.command_sends {
                        self.send(now);
                    } else {
                        self.finish(Err(LinkFailure::NoAcknowledge { sends: self.sends }));
                    }
                } else {
                    // The ACK may have been lost while the device works: wait for the response
                    // as long as an acknowledged command would get, and never resend.
                    self.state = State::AwaitResponse {
                        deadline: deadline + self.response_timeout,
                        acknowledged: false,
                    };
                }
            }
            State::AwaitResponse {
                deadline,
                acknowledged,
            } if now >= deadline => {
                let resend = self.command.resend_on_silence()
                    && (!acknowledged || self.command.resend_when_acknowledged());
                if resend && self.sends < self.config.command_sends {
                    self.send(now);
                } else {
                    self.finish(Err(LinkFailure::NoResponse { acknowledged }));
                }
            }
            _ => {}
        }
    }

    fn on_token(&mut self, token: Token, now: Instant) {
        match token {
            Token::Ack => {
                if let State::AwaitAck { .. } = self.state {
                    self.state = State::AwaitResponse {
                        deadline: now + self.response_timeout,
                        acknowledged: true,
                    };
                }
            }
            Token::Nak => match self.state {
                // An unacknowledged command NAKed late was still refused, so a resend is safe.
                State::AwaitAck { .. }
                | State::AwaitResponse {
                    acknowledged: false,
                    ..
                } => {
                    if self.sends < self.config.command_sends {
                        self.send(now);
                    } else {
                        self.finish(Err(LinkFailure::Rejected { sends: self.sends }));
                    }
                }
                _ => tracing::debug!("NAK while awaiting a response ignored"),
            },
            Token::Frame(frame) if frame.cmd == self.command.code() => {
                // Intact: ACK it whatever it says, or the device will repeat it.
                self.transmit.push_back(vec![ACK]);
                let parsed = Response::decode(&frame, self.config.combined_order)
                    .map_err(LinkFailure::Malformed);
                self.finish(parsed);
            }
            Token::Frame(frame) => {
                tracing::warn!(
                    cmd = frame.cmd,
                    expected = self.command.code(),
                    "stale response set aside"
                );
                self.transmit.push_back(vec![ACK]);
                self.stale.push(frame);
            }
            Token::Corrupt(FrameFault::BadHeader) => {
                tracing::debug!("damaged frame header skipped as noise");
            }
            Token::Corrupt(fault) => self.on_damaged_response(fault, now),
            Token::Stray(byte) => tracing::trace!(byte, "stray byte skipped"),
        }
    }

    /// A frame arrived damaged: most likely the response. Ask for it again.
    fn on_damaged_response(&mut self, fault: FrameFault, now: Instant) {
        if self.naks_sent >= self.config.response_naks {
            tracing::warn!(
                ?fault,
                naks = self.naks_sent,
                "response still damaged, giving up"
            );
            self.finish(Err(LinkFailure::Unreadable {
                naks: self.naks_sent,
            }));
            return;
        }
        tracing::debug!(?fault, "damaged response, sending NAK");
        self.naks_sent += 1;
        self.transmit.push_back(vec![NAK]);
        self.state = match self.state {
            // The device is answering, so it got the command; its ACK was lost.
            State::AwaitAck { .. } => State::AwaitResponse {
                deadline: now + self.response_timeout,
                acknowledged: false,
            },
            State::AwaitResponse {
                deadline,
                acknowledged,
            } => State::AwaitResponse {
                deadline: deadline.max(now + self.config.ack_timeout),
                acknowledged,
            },
            State::Done => State::Done,
        };
    }

    fn send(&mut self, now: Instant) {
        self.sends += 1;
        self.transmit.push_back(self.frame.clone());
        self.state = State::AwaitAck {
            deadline: now + self.config.ack_timeout,
        };
    }

    fn finish(&mut self, outcome: Result<Response, LinkFailure>) {
        self.state = State::Done;
        self.outcome = Some(outcome);
    }
}

/// The line after a response to a note-moving command: until it has been quiet for the
/// device's repeat wait, a repeat of that response may still come, so the next note-moving
/// command must wait. Every intact frame heard meanwhile is a repeat (ACK it) and restarts
/// the wait; the device gives up after [`RepeatWatch::MAX_REPEATS`] repeats, so more frames
/// than that mean the line is not behaving like an LCDM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatWatch {
    wait: Duration,
    last_heard: Instant,
    repeats: u8,
}

impl RepeatWatch {
    /// A device sends a response at most 3 times without an ACK: 2 repeats.
    pub const MAX_REPEATS: u8 = 2;

    /// Watches the line after a response heard at `at`.
    pub fn new(wait: Duration, at: Instant) -> Self {
        RepeatWatch {
            wait,
            last_heard: at,
            repeats: 0,
        }
    }

    /// An intact frame arrived at `at`: a repeat. False once more frames came than a
    /// device repeats.
    pub fn heard(&mut self, at: Instant) -> bool {
        self.last_heard = at;
        self.repeats = self.repeats.saturating_add(1);
        self.repeats <= Self::MAX_REPEATS
    }

    /// Repeats heard so far.
    pub fn repeats(&self) -> u8 {
        self.repeats
    }

    /// When the next note-moving command may go out, if nothing more is heard.
    pub fn quiet_at(&self) -> Instant {
        self.last_heard + self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispenser::lcdm::frame::{self, SOH};
    use crate::dispenser::lcdm::message::{BatchCount, Counts, ErrorCode, Slot};
    use crate::dispenser::status::Sensors;

    const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn dispense(n: u32) -> Command {
        Command::Dispense {
            slot: Slot::Upper,
            count: BatchCount::new(n).unwrap(),
        }
    }

    fn dispense_response(n: u8) -> Response {
        Response::Dispense {
            slot: Slot::Upper,
            counts: Counts {
                chk: n,
                exit: n,
                rejected: 0,
                near_end: false,
            },
            error: ErrorCode::GOOD,
        }
    }

    fn status_response() -> Response {
        Response::Status {
            error: ErrorCode::GOOD,
            sensors: Sensors::default(),
        }
    }

    fn drain(t: &mut Transaction) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| t.poll_transmit()).collect()
    }

    fn start(cmd: Command) -> (Transaction, Instant) {
        let now = Instant::now();
        let mut t = Transaction::new(cmd, LinkConfig::default(), RESPONSE_TIMEOUT, now);
        assert_eq!(drain(&mut t), vec![cmd.encode()]);
        (t, now)
    }

    fn encoded(r: &Response) -> Vec<u8> {
        r.encode(CombinedFieldOrder::default())
    }

    #[test]
    fn the_line_is_quiet_a_repeat_wait_after_the_last_frame_heard() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(700);
        let mut w = RepeatWatch::new(wait, t0);
        assert_eq!(w.quiet_at(), t0 + wait);
        // Each repeat restarts the wait; the device sends at most 3 times in all.
        assert!(w.heard(t0 + Duration::from_millis(500)));
        assert_eq!(w.quiet_at(), t0 + Duration::from_millis(1_200));
        assert!(w.heard(t0 + Duration::from_millis(1_000)));
        assert_eq!(w.repeats(), 2);
        assert!(
            !w.heard(t0 + Duration::from_millis(1_100)),
            "a third repeat is not an LCDM"
        );
    }

    #[test]
    fn happy_path_ack_then_response_then_our_ack() {
        let (mut t, t0) = start(dispense(10));
        assert_eq!(t.poll_timeout(), Some(t0 + ms(500)));
        t.handle_input(&[ACK], t0 + ms(5));
        assert!(t.acknowledged());
        assert_eq!(t.poll_timeout(), Some(t0 + ms(5) + RESPONSE_TIMEOUT));
        assert!(drain(&mut t).is_empty());
        t.handle_input(&encoded(&dispense_response(10)), t0 + ms(2000));
        assert!(t.is_done());
        assert_eq!(drain(&mut t), vec![vec![ACK]]);
        assert_eq!(t.take_outcome(), Some(Ok(dispense_response(10))));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn response_split_across_reads_with_stray_bytes_before() {
        let (mut t, t0) = start(Command::Status);
        t.handle_input(&[0xFF, 0xFF, ACK, 0xFF], t0 + ms(1));
        let bytes = encoded(&status_response());
        t.handle_input(&bytes[..4], t0 + ms(10));
        assert!(!t.is_done());
        // Mid-frame, the frame deadline is the earliest timeout.
        assert_eq!(t.poll_timeout(), Some(t0 + ms(10) + ms(200)));
        t.handle_input(&bytes[4..], t0 + ms(50));
        assert_eq!(t.take_outcome(), Some(Ok(status_response())));
    }

    #[test]
    fn nak_resends_up_to_three_times_then_succeeds() {
        let (mut t, t0) = start(dispense(5));
        for i in 1..=3u64 {
            t.handle_input(&[NAK], t0 + ms(i));
            assert_eq!(drain(&mut t), vec![dispense(5).encode()], "resend {i}");
        }
        t.handle_input(&[ACK], t0 + ms(10));
        t.handle_input(&encoded(&dispense_response(5)), t0 + ms(20));
        assert_eq!(t.take_outcome(), Some(Ok(dispense_response(5))));
    }

    #[test]
    fn four_naks_reject_the_command() {
        let (mut t, t0) = start(dispense(5));
        for i in 1..=3u64 {
            t.handle_input(&[NAK], t0 + ms(i));
            assert_eq!(drain(&mut t).len(), 1);
        }
        t.handle_input(&[NAK], t0 + ms(4));
        assert!(drain(&mut t).is_empty(), "no fifth send");
        let failure = t.take_outcome().unwrap().unwrap_err();
        assert_eq!(failure, LinkFailure::Rejected { sends: 4 });
        assert!(failure.certainly_not_executed());
    }

    #[test]
    fn silence_resends_safe_commands_only() {
        let (mut t, t0) = start(Command::Status);
        let mut now = t0;
        for _ in 0..3 {
            now += ms(500);
            t.handle_timeout(now);
            assert_eq!(drain(&mut t), vec![Command::Status.encode()]);
        }
        now += ms(500);
        t.handle_timeout(now);
        assert_eq!(
            t.take_outcome(),
            Some(Err(LinkFailure::NoAcknowledge { sends: 4 }))
        );
    }

    #[test]
    fn silence_never_resends_a_dispense() {
        let (mut t, t0) = start(dispense(20));
        t.handle_timeout(t0 + ms(499));
        assert!(!t.is_done());
        t.handle_timeout(t0 + ms(500));
        assert!(
            drain(&mut t).is_empty(),
            "a dispense is not resent on silence"
        );
        assert!(!t.is_done(), "keep waiting: the ACK may have been lost");
        assert_eq!(t.poll_timeout(), Some(t0 + ms(500) + RESPONSE_TIMEOUT));
        t.handle_timeout(t0 + ms(500) + RESPONSE_TIMEOUT);
        let failure = t.take_outcome().unwrap().unwrap_err();
        assert_eq!(
            failure,
            LinkFailure::NoResponse {
                acknowledged: false
            }
        );
        assert!(!failure.certainly_not_executed());
    }

    #[test]
    fn lost_ack_but_response_arrives() {
        let (mut t, t0) = start(dispense(3));
        t.handle_timeout(t0 + ms(600));
        t.handle_input(&encoded(&dispense_response(3)), t0 + ms(3000));
        assert_eq!(drain(&mut t), vec![vec![ACK]]);
        assert_eq!(t.take_outcome(), Some(Ok(dispense_response(3))));
    }

    #[test]
    fn late_nak_after_ack_timeout_allows_a_resend() {
        let (mut t, t0) = start(dispense(3));
        t.handle_timeout(t0 + ms(500));
        t.handle_input(&[NAK], t0 + ms(700));
        assert_eq!(drain(&mut t), vec![dispense(3).encode()]);
    }

    #[test]
    fn nak_after_ack_is_ignored() {
        let (mut t, t0) = start(dispense(3));
        t.handle_input(&[ACK], t0 + ms(1));
        t.handle_input(&[NAK], t0 + ms(2));
        assert!(drain(&mut t).is_empty());
        assert!(!t.is_done());
    }

    #[test]
    fn acknowledged_dispense_without_response_is_no_response() {
        let (mut t, t0) = start(dispense(3));
        t.handle_input(&[ACK], t0 + ms(1));
        t.handle_timeout(t0 + ms(1) + RESPONSE_TIMEOUT);
        assert_eq!(
            t.take_outcome(),
            Some(Err(LinkFailure::NoResponse { acknowledged: true }))
        );
    }

    #[test]
    fn acknowledged_status_without_response_is_resent() {
        let (mut t, t0) = start(Command::Status);
        t.handle_input(&[ACK], t0 + ms(1));
        t.handle_timeout(t0 + ms(1) + RESPONSE_TIMEOUT);
        assert_eq!(drain(&mut t), vec![Command::Status.encode()]);
        assert!(!t.is_done());
    }

    #[test]
    fn acknowledged_purge_without_response_is_not_resent() {
        let (mut t, t0) = start(Command::Purge);
        t.handle_input(&[ACK], t0 + ms(1));
        t.handle_timeout(t0 + ms(1) + RESPONSE_TIMEOUT);
        assert!(drain(&mut t).is_empty());
        assert_eq!(
            t.take_outcome(),
            Some(Err(LinkFailure::NoResponse { acknowledged: true }))
        );
        // Unacknowledged, it is resent like any safe command.
        let (mut t, t0) = start(Command::Purge);
        t.handle_timeout(t0 + LinkConfig::default().ack_timeout);
        assert_eq!(drain(&mut t), vec![Command::Purge.encode()]);
    }

    fn corrupt(mut bytes: Vec<u8>) -> Vec<u8> {
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        bytes
    }

    #[test]
    fn corrupt_bcc_is_naked_and_the_resent_copy_accepted() {
        let (mut t, t0) = start(dispense(7));
        t.handle_input(&[ACK], t0 + ms(1));
        let good = encoded(&dispense_response(7));
        for i in 0..3u64 {
            t.handle_input(&corrupt(good.clone()), t0 + ms(100 + i));
            assert_eq!(drain(&mut t), vec![vec![NAK]]);
            assert!(!t.is_done());
        }
        t.handle_input(&good, t0 + ms(200));
        assert_eq!(drain(&mut t), vec![vec![ACK]]);
        assert_eq!(t.take_outcome(), Some(Ok(dispense_response(7))));
    }

    #[test]
    fn fourth_corrupt_copy_makes_the_response_unreadable() {
        let (mut t, t0) = start(dispense(7));
        t.handle_input(&[ACK], t0 + ms(1));
        let bad = corrupt(encoded(&dispense_response(7)));
        for i in 0..4u64 {
            t.handle_input(&bad, t0 + ms(100 + i));
        }
        assert_eq!(drain(&mut t), vec![vec![NAK]; 3]);
        assert_eq!(
            t.take_outcome(),
            Some(Err(LinkFailure::Unreadable { naks: 3 }))
        );
    }

    #[test]
    fn nak_for_damaged_response_waits_for_the_copy_not_forever() {
        let (mut t, t0) = start(dispense(7));
        t.handle_input(&[ACK], t0);
        let bad = corrupt(encoded(&dispense_response(7)));
        t.handle_input(&bad, t0 + ms(10));
        // Deadline stays the response deadline (it is later than a resend wait).
        assert_eq!(t.poll_timeout(), Some(t0 + RESPONSE_TIMEOUT));
    }

    #[test]
    fn damaged_response_before_ack_counts_as_device_activity() {
        let (mut t, t0) = start(dispense(7));
        let bad = corrupt(encoded(&dispense_response(7)));
        t.handle_input(&bad, t0 + ms(10));
        assert_eq!(drain(&mut t), vec![vec![NAK]]);
        // Not resent on the ACK deadline: the device is already answering.
        t.handle_timeout(t0 + ms(600));
        assert!(drain(&mut t).is_empty());
        assert!(!t.is_done());
    }

    #[test]
    fn incomplete_frame_times_out_and_is_naked() {
        let (mut t, t0) = start(Command::Status);
        t.handle_input(&[ACK], t0);
        let bytes = encoded(&status_response());
        t.handle_input(&bytes[..5], t0 + ms(10));
        assert_eq!(t.poll_timeout(), Some(t0 + ms(210)));
        t.handle_timeout(t0 + ms(210));
        assert_eq!(drain(&mut t), vec![vec![NAK]]);
        t.handle_input(&bytes, t0 + ms(300));
        assert_eq!(t.take_outcome(), Some(Ok(status_response())));
    }

    #[test]
    fn stale_response_to_another_command_is_acked_and_set_aside() {
        let (mut t, t0) = start(Command::Status);
        t.handle_input(&[ACK], t0);
        let stale = encoded(&dispense_response(20));
        t.handle_input(&stale, t0 + ms(5));
        assert_eq!(drain(&mut t), vec![vec![ACK]]);
        assert!(!t.is_done());
        let frames = t.take_stale();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].cmd, 0x45);
        t.handle_input(&encoded(&status_response()), t0 + ms(10));
        assert_eq!(t.take_outcome(), Some(Ok(status_response())));
    }

    #[test]
    fn intact_but_malformed_response_is_acked_and_reported() {
        let (mut t, t0) = start(dispense(2));
        t.handle_input(&[ACK], t0);
        let bad = frame::encode(Direction::FromDevice, 0x45, b"0x02\x30\x3000");
        t.handle_input(&bad, t0 + ms(5));
        assert_eq!(drain(&mut t), vec![vec![ACK]]);
        assert!(matches!(
            t.take_outcome(),
            Some(Err(LinkFailure::Malformed(ParseError::NotDigits(_))))
        ));
    }

    #[test]
    fn noise_with_stray_soh_is_not_naked() {
        let (mut t, t0) = start(Command::Status);
        t.handle_input(&[ACK, SOH, 0x99, 0xFF], t0);
        assert!(drain(&mut t).is_empty());
        t.handle_input(&encoded(&status_response()), t0 + ms(5));
        assert_eq!(t.take_outcome(), Some(Ok(status_response())));
    }

    #[test]
    fn bytes_after_completion_are_acked_as_stale() {
        let (mut t, t0) = start(Command::Status);
        t.handle_input(&[ACK], t0);
        let mut bytes = encoded(&status_response());
        bytes.extend(encoded(&status_response()));
        t.handle_input(&bytes, t0 + ms(5));
        assert_eq!(drain(&mut t), vec![vec![ACK], vec![ACK]]);
        assert_eq!(t.take_stale().len(), 1);
    }
}
