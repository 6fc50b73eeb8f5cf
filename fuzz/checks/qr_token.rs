// The QR token parser: arbitrary text must never panic and never verify.
//
// Shared by the fuzz target and the regression test that replays fuzz/regressions/.

use qrcash_protocol::PrivateKey;
use qrcash_protocol::token::{CodeToken, looks_like_token};

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = PrivateKey::from_bytes([7; 32]);
    let _ = looks_like_token(text);
    let _ = CodeToken::parse_unverified(text);
    assert!(CodeToken::verify(text, &[key.public().clone()], 0).is_err());
}
