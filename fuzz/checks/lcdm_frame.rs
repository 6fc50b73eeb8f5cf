// The LCDM serial decoder, both directions: garbage on the line must never panic, every
// frame it accepts must pass its BCC, and a response it parses must encode back to a frame
// that parses to the same response.
//
// Shared by the fuzz target and the regression test that replays fuzz/regressions/.

use std::time::{Duration, Instant};
use qrcash_hardware::dispenser::lcdm::CombinedFieldOrder;
use qrcash_hardware::dispenser::lcdm::frame::{Direction, FrameDecoder, Token};
use qrcash_hardware::dispenser::lcdm::message::{Command, Response};

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let start = Instant::now();
    for direction in [Direction::FromDevice, Direction::ToDevice] {
        let mut decoder = FrameDecoder::new(direction);
        // The first byte spreads the input over time, so frame timeouts are exercised too.
        let step = Duration::from_millis(u64::from(data.first().copied().unwrap_or(0) % 50));
        let mut now = start;
        let mut tokens = Vec::new();
        for &b in data {
            now += step;
            decoder.push(b, now, &mut tokens);
        }
        tokens.extend(decoder.expire(now + Duration::from_secs(1)));
        for t in tokens {
            let Token::Frame(raw) = t else { continue };
            match direction {
                Direction::FromDevice => {
                    for order in [CombinedFieldOrder::default()] {
                        if let Ok(resp) = Response::decode(&raw, order) {
                            let bytes = resp.encode(order);
                            let mut again = FrameDecoder::new(Direction::FromDevice);
                            let re = again.push_bytes(&bytes, start);
                            let [Token::Frame(raw2)] = re.as_slice() else {
                                panic!("re-encoded response is not one frame: {re:?}");
                            };
                            assert_eq!(Response::decode(raw2, order).ok(), Some(resp));
                        }
                    }
                }
                Direction::ToDevice => {
                    let _ = Command::decode(&raw);
                }
            }
        }
    }
}
