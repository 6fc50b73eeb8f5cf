//! LCDM wire framing: control bytes, the BCC checksum, frame encoding and a timed,
//! resynchronising frame decoder.
//!
//! Knows nothing of what commands mean (that is `message`) nor of retries (that is `link`).
//! Pure: bytes and `Instant`s in, tokens out.

use std::time::{Duration, Instant};

/// Start of a host-to-device frame (command).
pub const EOT: u8 = 0x04;
/// Start of a device-to-host frame (response).
pub const SOH: u8 = 0x01;
/// Device address byte of the LCDM-1000/2000.
pub const ID: u8 = 0x50;
/// Start of text.
pub const STX: u8 = 0x02;
/// End of text; the BCC follows.
pub const ETX: u8 = 0x03;
/// Positive acknowledge.
pub const ACK: u8 = 0x06;
/// Negative acknowledge ("NCK" in the manual).
pub const NAK: u8 = 0x15;

/// Longest frame accepted; real LCDM frames are at most 21 bytes.
pub const MAX_FRAME_LEN: usize = 64;

/// Default time a whole frame may take from its first byte to its BCC.
pub const FRAME_TIMEOUT: Duration = Duration::from_millis(200);

/// Which side sent the frames a decoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Frames from the host: start with EOT (the simulator reads these).
    ToDevice,
    /// Frames from the device: start with SOH (the driver reads these).
    FromDevice,
}

impl Direction {
    /// The byte that opens a frame in this direction.
    pub fn start_byte(self) -> u8 {
        match self {
            Direction::ToDevice => EOT,
            Direction::FromDevice => SOH,
        }
    }
}

/// XOR of every byte given: the LCDM block check character over start byte..=ETX.
pub fn bcc(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Encodes one frame: `start ID STX cmd data… ETX BCC`.
pub fn encode(direction: Direction, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 6);
    out.extend_from_slice(&[direction.start_byte(), ID, STX, cmd]);
    out.extend_from_slice(data);
    out.push(ETX);
    out.push(bcc(&out));
    out
}

/// A frame that passed the header and BCC checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// Command byte.
    pub cmd: u8,
    /// Bytes between the command byte and ETX.
    pub data: Vec<u8>,
}

/// Why bytes that started a frame were thrown away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFault {
    /// The BCC did not match.
    BadBcc {
        /// BCC computed over the received bytes.
        expected: u8,
        /// BCC received.
        received: u8,
    },
    /// The byte after the start byte was not the device ID, or STX was missing.
    BadHeader,
    /// No ETX within `MAX_FRAME_LEN` bytes.
    TooLong,
    /// The frame did not complete within the frame timeout.
    Incomplete,
}

/// One unit of decoded input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// An ACK byte outside a frame.
    Ack,
    /// A NAK byte outside a frame.
    Nak,
    /// A complete, intact frame.
    Frame(RawFrame),
    /// A damaged or incomplete frame was dropped.
    Corrupt(FrameFault),
    /// A byte outside any frame that means nothing (line noise, 0xFF idle bytes); skipped.
    Stray(u8),
}

/// Incremental decoder for one direction of the line.
///
/// Feed it bytes with the time they arrived; it yields tokens. A frame must complete within
/// the frame timeout of its first byte, or it is dropped as `Incomplete`.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    direction: Direction,
    frame_timeout: Duration,
    buf: Vec<u8>,
    started: Option<Instant>,
}

impl FrameDecoder {
    /// A decoder with the standard 200 ms frame timeout.
    pub fn new(direction: Direction) -> Self {
        Self::with_timeout(direction, FRAME_TIMEOUT)
    }

    /// A decoder with a custom frame timeout.
    pub fn with_timeout(direction: Direction, frame_timeout: Duration) -> Self {
        FrameDecoder {
            direction,
            frame_timeout,
            buf: Vec::with_capacity(MAX_FRAME_LEN),
            started: None,
        }
    }

    /// When the partial frame being assembled must be complete, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        self.started.map(|t| t + self.frame_timeout)
    }

    /// True while a frame is partly received.
    pub fn in_frame(&self) -> bool {
        self.started.is_some()
    }

    /// Drops a partial frame whose deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Option<Token> {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                self.reset();
                Some(Token::Corrupt(FrameFault::Incomplete))
            }
            _ => None,
        }
    }

    /// Forgets any partial frame.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.started = None;
    }

    /// Decodes a run of bytes that arrived at `now`.
    pub fn push_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<Token> {
        let mut out = Vec::new();
        for &b in bytes {
            self.push(b, now, &mut out);
        }
        out
    }

    /// Decodes one byte that arrived at `now`, appending any tokens to `out`.
    pub fn push(&mut self, byte: u8, now: Instant, out: &mut Vec<Token>) {
        if let Some(token) = self.expire(now) {
            out.push(token);
        }
        if self.started.is_none() {
            self.idle_byte(byte, now, out);
            return;
        }
        self.buf.push(byte);
        match self.buf.len() {
            2 if byte != ID => self.resync_on(byte, FrameFault::BadHeader, now, out),
            3 if byte != STX => self.resync_on(byte, FrameFault::BadHeader, now, out),
            // Index 3 is the command byte (any value); ETX can come at index 4 at the earliest,
            // and the byte after it is the BCC whatever its value.
            len if len >= 6 && self.buf[len - 2] == ETX => self.finish(out),
            len if len >= MAX_FRAME_LEN => {
                self.reset();
                out.push(Token::Corrupt(FrameFault::TooLong));
            }
            _ => {}
        }
    }

    fn idle_byte(&mut self, byte: u8, now: Instant, out: &mut Vec<Token>) {
        match byte {
            ACK => out.push(Token::Ack),
            NAK => out.push(Token::Nak),
            b if b == self.direction.start_byte() => {
                self.buf.push(b);
                self.started = Some(now);
            }
            b => out.push(Token::Stray(b)),
        }
    }

    /// A header byte was wrong: drop the frame, then treat the byte as if seen while idle,
    /// since it may itself start the real frame.
    fn resync_on(&mut self, byte: u8, fault: FrameFault, now: Instant, out: &mut Vec<Token>) {
        self.reset();
        out.push(Token::Corrupt(fault));
        self.idle_byte(byte, now, out);
    }

    /// `buf` ends with `ETX BCC`.
    fn finish(&mut self, out: &mut Vec<Token>) {
        let len = self.buf.len();
        let received = self.buf[len - 1];
        let expected = bcc(&self.buf[..len - 1]);
        let token = if expected == received {
            Token::Frame(RawFrame {
                cmd: self.buf[3],
                data: self.buf[4..len - 2].to_vec(),
            })
        } else {
            Token::Corrupt(FrameFault::BadBcc { expected, received })
        };
        self.reset();
        out.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn worked_example_dispense_ten() {
        let frame = encode(Direction::ToDevice, 0x45, b"10");
        let body = [0x04, 0x50, 0x02, 0x45, 0x31, 0x30, 0x03];
        assert_eq!(&frame[..7], &body);
        assert_eq!(frame[7], body.iter().fold(0, |a, b| a ^ b));
        assert_eq!(frame[7], 0x04 ^ 0x50 ^ 0x02 ^ 0x45 ^ 0x31 ^ 0x30 ^ 0x03);
        let mut d = FrameDecoder::new(Direction::ToDevice);
        assert_eq!(
            d.push_bytes(&frame, t0()),
            vec![Token::Frame(RawFrame {
                cmd: 0x45,
                data: b"10".to_vec()
            })]
        );
    }

    #[test]
    fn ack_nak_and_stray_bytes_outside_frames() {
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let t = t0();
        let mut input = vec![0xFF, ACK, 0x00, NAK, 0xFF];
        input.extend(encode(Direction::FromDevice, 0x44, &[0x30]));
        input.push(0xFF);
        assert_eq!(
            d.push_bytes(&input, t),
            vec![
                Token::Stray(0xFF),
                Token::Ack,
                Token::Stray(0x00),
                Token::Nak,
                Token::Stray(0xFF),
                Token::Frame(RawFrame {
                    cmd: 0x44,
                    data: vec![0x30]
                }),
                Token::Stray(0xFF),
            ]
        );
        assert!(!d.in_frame());
    }

    #[test]
    fn frames_of_the_other_direction_are_not_frames() {
        // A driver must not take its own echoed command for a response.
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let tokens = d.push_bytes(&encode(Direction::ToDevice, 0x46, &[]), t0());
        assert!(
            tokens.iter().all(|t| matches!(t, Token::Stray(_))),
            "{tokens:?}"
        );
    }

    #[test]
    fn corrupt_bcc_is_reported_and_decoder_recovers() {
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let t = t0();
        let mut bad = encode(Direction::FromDevice, 0x44, &[0x30]);
        let good = bad.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x5A;
        let tokens = d.push_bytes(&bad, t);
        assert_eq!(
            tokens,
            vec![Token::Corrupt(FrameFault::BadBcc {
                expected: good[last],
                received: bad[last]
            })]
        );
        assert!(matches!(d.push_bytes(&good, t)[..], [Token::Frame(_)]));
    }

    #[test]
    fn bcc_equal_to_control_bytes_is_still_the_bcc() {
        // Find a data byte that makes the BCC equal to ACK / ETX / SOH; the decoder must take it
        // as the BCC, not as a control byte.
        for target in [ACK, NAK, ETX, SOH, EOT] {
            let data_byte = (0..=0xFF)
                .filter(|&b| b != ETX)
                .find(|&b| encode(Direction::FromDevice, 0x44, &[b]).last() == Some(&target))
                .expect("some byte yields the BCC");
            let frame = encode(Direction::FromDevice, 0x44, &[data_byte]);
            let mut d = FrameDecoder::new(Direction::FromDevice);
            assert_eq!(
                d.push_bytes(&frame, t0()),
                vec![Token::Frame(RawFrame {
                    cmd: 0x44,
                    data: vec![data_byte]
                })]
            );
        }
    }

    #[test]
    fn bad_header_resynchronises_on_the_offending_byte() {
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let mut input = vec![SOH];
        input.extend(encode(
            Direction::FromDevice,
            0x46,
            &[0x30, 0x30, 0x80, 0x80],
        ));
        let tokens = d.push_bytes(&input, t0());
        assert_eq!(tokens.len(), 2, "{tokens:?}");
        assert_eq!(tokens[0], Token::Corrupt(FrameFault::BadHeader));
        assert!(matches!(
            tokens[1],
            Token::Frame(RawFrame { cmd: 0x46, .. })
        ));

        let mut d = FrameDecoder::new(Direction::FromDevice);
        assert_eq!(
            d.push_bytes(&[SOH, ID, 0x99, ACK], t0()),
            vec![
                Token::Corrupt(FrameFault::BadHeader),
                Token::Stray(0x99),
                Token::Ack
            ]
        );
    }

    #[test]
    fn frame_must_complete_within_the_frame_timeout() {
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let t = t0();
        let frame = encode(Direction::FromDevice, 0x44, &[0x30]);
        assert!(d.push_bytes(&frame[..3], t).is_empty());
        assert_eq!(d.deadline(), Some(t + FRAME_TIMEOUT));
        assert_eq!(d.expire(t + Duration::from_millis(199)), None);
        // The rest arrives too late: the partial frame is dropped and the tail is noise.
        let tokens = d.push_bytes(&frame[3..], t + Duration::from_millis(201));
        assert_eq!(tokens[0], Token::Corrupt(FrameFault::Incomplete));
        assert!(
            tokens[1..].iter().all(|t| matches!(t, Token::Stray(_))),
            "{tokens:?}"
        );
        // Expiry without further bytes.
        assert!(d.push_bytes(&frame[..2], t).is_empty());
        assert_eq!(
            d.expire(t + FRAME_TIMEOUT),
            Some(Token::Corrupt(FrameFault::Incomplete))
        );
        assert!(!d.in_frame());
        // Slow but in time is fine.
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let mut tokens = Vec::new();
        for (i, b) in frame.iter().enumerate() {
            d.push(*b, t + Duration::from_millis(30 * i as u64), &mut tokens);
        }
        assert!(matches!(tokens[..], [Token::Frame(_)]), "{tokens:?}");
    }

    #[test]
    fn runaway_frame_is_cut_off() {
        let mut d = FrameDecoder::new(Direction::FromDevice);
        let mut input = vec![SOH, ID, STX, 0x46];
        input.extend(std::iter::repeat_n(0x30, MAX_FRAME_LEN));
        let tokens = d.push_bytes(&input, t0());
        assert!(
            tokens.contains(&Token::Corrupt(FrameFault::TooLong)),
            "{tokens:?}"
        );
        assert!(!tokens.iter().any(|t| matches!(t, Token::Frame(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_never_yields_a_frame_with_bad_bcc(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            gaps in proptest::collection::vec(0u64..300, 0..512),
        ) {
            let mut d = FrameDecoder::new(Direction::FromDevice);
            let t = Instant::now();
            let mut now = t;
            let mut out = Vec::new();
            for (i, b) in bytes.iter().enumerate() {
                now += Duration::from_millis(gaps.get(i).copied().unwrap_or(0));
                d.push(*b, now, &mut out);
            }
            let _ = d.expire(now + Duration::from_secs(1));
            for token in out {
                if let Token::Frame(f) = token {
                    // Whatever came out must re-encode to a frame with a valid BCC.
                    let re = encode(Direction::FromDevice, f.cmd, &f.data);
                    prop_assert_eq!(bcc(&re[..re.len() - 1]), re[re.len() - 1]);
                    prop_assert!(re.len() <= MAX_FRAME_LEN);
                }
            }
        }

        #[test]
        fn a_frame_after_noise_is_found(
            noise in proptest::collection::vec(any::<u8>().prop_filter("no SOH", |b| *b != SOH), 0..64),
            cmd in any::<u8>(),
            data in proptest::collection::vec(0x30u8..=0xFF, 0..16),
        ) {
            let mut d = FrameDecoder::new(Direction::FromDevice);
            let mut input = noise;
            input.extend(encode(Direction::FromDevice, cmd, &data));
            let tokens = d.push_bytes(&input, Instant::now());
            prop_assert_eq!(
                tokens.last(),
                Some(&Token::Frame(RawFrame { cmd, data }))
            );
        }
    }
}
