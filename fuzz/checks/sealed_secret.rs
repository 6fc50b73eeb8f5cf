// The sealed-secret parser and opener (docs/protocol.md §6.5): arbitrary bytes must never
// panic, nothing made without the hub key's public half and the right context ever opens,
// and what is sealed opens to exactly itself.
//
// Shared by the fuzz target and the regression test that replays fuzz/regressions/.

use qrcash_protocol::jws::b64;
use qrcash_protocol::keys::KeyId;
use qrcash_protocol::{PrivateKey, SealedSecret, SecretField, SecretSealer};

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let hub = PrivateKey::from_bytes([9; 32]);
    let kid = hub.kid().as_str().to_owned();
    let open = |s: &SealedSecret| s.open(&hub, SecretField::Password, "dev-1", "kid-1");

    // As JSON off the wire: parses or not, never opens (no tag can be forged).
    if let Ok(s) = serde_json::from_slice::<SealedSecret>(data) {
        assert!(open(&s).is_err(), "forged JSON opened: {s:?}");
    }
    // As raw enc and ct under the hub's own key id: never opens either.
    let split = data.len().min(32);
    let raw = SealedSecret {
        kid: kid.clone(),
        enc: b64(&data[..split]),
        ct: b64(&data[split..]),
    };
    assert!(open(&raw).is_err(), "raw bytes opened");

    // As a secret (inputs starting with `S`, so that the costly key agreements of a seal and
    // three opens do not slow every run): sealed and opened again it is itself, and only in
    // its own context.
    if let Some(secret) = data
        .strip_prefix(b"S")
        .and_then(|rest| std::str::from_utf8(rest).ok())
    {
        let sealer = SecretSealer::new(hub.public().clone(), "dev-1", KeyId::from_wire("kid-1"));
        match sealer.seal(SecretField::Password, secret) {
            Ok(s) => {
                assert_eq!(open(&s).map(|o| o.expose().to_owned()).ok().as_deref(), Some(secret));
                assert!(s.open(&hub, SecretField::Pin, "dev-1", "kid-1").is_err());
                assert!(s.open(&hub, SecretField::Password, "dev-2", "kid-1").is_err());
            }
            Err(_) => assert!(secret.is_empty() || secret.len() > 256),
        }
    }
}
