// The signed-envelope parser: arbitrary bytes must never panic, and nothing unsigned by the
// trusted key is ever opened.
//
// Shared by the fuzz target and the regression test that replays fuzz/regressions/.

use qrcash_protocol::messages::{AtmDown, AtmUp, PhonePush, PhoneUp};
use qrcash_protocol::{MAX_DOWNLINK_BYTES, PrivateKey, Sealed};

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let key = PrivateKey::from_bytes([7; 32]);
    if let Ok(sealed) = Sealed::parse(data, MAX_DOWNLINK_BYTES) {
        let _ = sealed.peek::<PhoneUp>();
        let _ = sealed.peek::<PhonePush>();
        let _ = sealed.peek::<AtmDown>();
        assert!(
            sealed.open::<AtmUp>(key.public()).is_err(),
            "a message the fuzzer made verified under a key it does not have"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = qrcash_protocol::jws::Compact::parse(text);
    }
}
