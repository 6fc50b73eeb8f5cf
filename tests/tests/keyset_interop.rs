//! The hub's key set (`docs/protocol.md` §3, "The hub's key set") against an independent
//! implementation: a Python device written from the document on pyca/cryptography
//! (`tests/python/keyset.py`). What the hub publishes, Python learns from; what Python
//! endorses, the Rust device code learns from; both compute the same key ids.
//!
//! The Python environment comes from `scripts/install-deps.sh` (`target/pyvenv`, or
//! `QRCASH_PYTHON`); without it these tests fail and say so.

use qrcash_hub::keyring::KeyRing;
use qrcash_protocol::jws::b64;
use qrcash_protocol::keyset::{self, KeySetError};
use qrcash_protocol::{PrivateKey, PublicKey};

const NOW: u64 = 1_800_000_000;

/// Runs `keyset.py` with `args` and `stdin`; `Ok(stdout)` or `Err(stderr)`.
fn python(args: &[&str], stdin: &[u8]) -> Result<String, String> {
    let out = qrcash_tests::python::run("keyset.py", args, stdin);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn x(key: &PublicKey) -> String {
    key.to_jwk().x
}

#[test]
fn python_computes_the_same_key_ids() {
    for _ in 0..4 {
        let key = PrivateKey::generate();
        let x = x(key.public());
        assert_eq!(python(&["kid", &x], b"").unwrap(), key.kid().as_str());
    }
}

#[test]
fn a_python_device_learns_the_new_key_from_what_the_hub_publishes() {
    let old = PrivateKey::generate();
    let new = PrivateKey::generate();
    let ring = KeyRing::new(new.clone())
        .with_previous(vec![old.clone()])
        .unwrap();
    let message = ring.key_set("hub", NOW).to_bytes();

    let learned: serde_json::Value =
        serde_json::from_str(&python(&["learn", "hub", &x(old.public())], &message).unwrap())
            .unwrap();
    assert_eq!(learned["current"], new.kid().as_str());
    assert_eq!(
        learned["keys"],
        serde_json::json!([new.kid().as_str(), old.kid().as_str()])
    );
    assert_eq!(learned["endorsed_by"], old.kid().as_str());

    // A device that trusts neither key learns nothing; one that expects another hub
    // refuses the set.
    let stranger = PrivateKey::generate();
    let e = python(&["learn", "hub", &x(stranger.public())], &message).unwrap_err();
    assert!(e.contains("no endorsement by a trusted key"), "{e}");
    let e = python(&["learn", "other-hub", &x(old.public())], &message).unwrap_err();
    assert!(e.contains("bad key set"), "{e}");
}

#[test]
fn the_rust_device_code_learns_from_a_python_endorsement() {
    let seed = [0x3c; 32];
    let old = PrivateKey::from_bytes(seed);
    let new = PrivateKey::generate();
    let message = python(
        &[
            "endorse",
            "hub",
            &NOW.to_string(),
            &b64(&seed),
            &x(new.public()),
            &x(old.public()),
        ],
        b"",
    )
    .unwrap();
    let learned = keyset::learn(message.as_bytes(), "hub", &[old.public().clone()]).unwrap();
    assert_eq!(&learned.current, new.public());
    assert_eq!(
        learned.keys,
        vec![new.public().clone(), old.public().clone()]
    );
    assert_eq!(&learned.endorsed_by, old.kid());
    assert!(matches!(
        keyset::learn(message.as_bytes(), "other-hub", &[old.public().clone()]),
        Err(KeySetError::Refused { .. })
    ));
    assert!(matches!(
        keyset::learn(message.as_bytes(), "hub", &[new.public().clone()]),
        Err(KeySetError::NoTrustedEndorsement(_))
    ));
}
