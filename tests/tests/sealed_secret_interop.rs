//! Sealed secrets (`docs/protocol.md` §6.5) against an independent implementation: a Python
//! client written from the document on pyhpke (RFC 9180) and pyca/cryptography
//! (`tests/python/sealed_secret.py`). What Python seals, the hub opens and logs in with; what
//! the Rust side seals, Python opens; the document's vector opens in Python.
//!
//! The Python environment comes from `scripts/install-deps.sh` (`target/pyvenv`, or
//! `QRCASH_PYTHON`); without it these tests fail and say so.

use qrcash_hub::handler::Disposition;
use qrcash_hub::testkit::{Rig, TestDevice, login_message, password, seal_for, test_hub_key};
use qrcash_protocol::jws::b64;
use qrcash_protocol::messages::{PhonePush, PhoneUp};
use qrcash_protocol::{SealedSecret, SecretField};

fn python(args: &[&str]) -> String {
    qrcash_tests::python::ok("sealed_secret.py", args, b"")
}

fn hub_public_x() -> String {
    test_hub_key().public().to_jwk().x
}

#[test]
fn the_x25519_form_of_the_hub_key_agrees() {
    assert_eq!(
        python(&["x25519", &hub_public_x()]),
        b64(&qrcash_protocol::sealed::x25519_public(
            test_hub_key().public()
        ))
    );
}

#[test]
fn a_password_sealed_in_python_logs_in_at_the_hub() {
    let mut rig = Rig::in_memory(601);
    rig.account("hanako", 1_000);
    let mut phone = TestDevice::new("py-phone");
    let kid = phone.key.kid().as_str().to_owned();
    let sealed: SealedSecret = serde_json::from_str(&python(&[
        "seal",
        &hub_public_x(),
        test_hub_key().kid().as_str(),
        "password",
        "py-phone",
        &kid,
        &password("hanako"),
    ]))
    .unwrap();
    let mut msg = login_message(&phone, "hanako", None);
    if let PhoneUp::Login(l) = &mut msg {
        l.password = sealed.clone();
    }
    let h = rig.phone(&mut phone, msg);
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    assert!(matches!(
        rig.pushes(&h.outgoing, "py-phone").first().map(|c| &c.msg),
        Some(PhonePush::LoginResult(_))
    ));
    // Sealed for the password field, it is not a PIN.
    assert!(
        sealed
            .open(&test_hub_key(), SecretField::Pin, "py-phone", &kid)
            .is_err()
    );
}

#[test]
fn a_pin_sealed_in_rust_opens_in_python_only_with_the_right_context() {
    let phone = TestDevice::new("rs-phone");
    let sealed = seal_for(&phone, SecretField::Pin, "4321");
    let seed = b64(&[0x5a; 32]); // test_hub_key()'s seed
    let json = serde_json::to_string(&sealed).unwrap();
    let kid = phone.key.kid().as_str();
    assert_eq!(
        python(&["open", &seed, "pin", "rs-phone", kid, &json]),
        "4321"
    );
}

#[test]
fn the_documents_vector_opens_in_python() {
    let spec = include_str!("../../docs/protocol.md");
    let block = spec
        .split("```json sealed-secret")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a `json sealed-secret` block in docs/protocol.md")
        .trim();
    assert_eq!(
        python(&[
            "open",
            "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
            "password",
            "dev-hanako-1",
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
            block,
        ]),
        "correct horse battery"
    );
}
