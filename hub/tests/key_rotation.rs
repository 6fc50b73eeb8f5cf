//! The hub across a key rotation (`docs/deployment.md` §4), through the real handler: a
//! password a phone sealed to the previous key still opens (both on the writer and in the
//! secret-checking stage), every answer is signed by the new key, without the previous key
//! the same login is refused, and a previous key verifies only codes it signed.

use qrcash_hub::handler::{Disposition, HandleError};
use qrcash_hub::keyring::KeyRing;
use qrcash_hub::secrets::wanted;
use qrcash_hub::store::Store;
use qrcash_hub::testkit::{Rig, TestDevice, login_message, near_atm, test_config, test_hub_key};
use qrcash_protocol::messages::{AtmUp, CodePresented, PhonePush};
use qrcash_protocol::{CodeToken, PrivateKey, RejectReason};

#[test]
fn a_password_sealed_to_the_previous_key_still_logs_in() {
    let old = test_hub_key();
    let new = PrivateKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let mut rig = Rig::with_key(Store::open(&path).unwrap(), test_config(), 5, new.clone());
    rig.hub = rig.hub.with_previous_keys(vec![old.clone()]).unwrap();
    rig.account("hanako", 100_000);

    // `login_message` seals the password to the test hub key: the previous one now.
    let mut phone = TestDevice::new("phone-1");
    let h = rig.login(&mut phone, "hanako");
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    assert!(matches!(
        rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg),
        Some(PhonePush::LoginResult(_))
    ));
    assert_eq!(
        rig.hub_key(),
        new.public().clone(),
        "answers come from the new key"
    );

    // The secret stage opens it with the same key ring.
    let reader = Store::open_reader(&path).unwrap();
    let mut second = TestDevice::new("phone-2");
    let payload = second.message(
        &rig.hub_id(),
        rig.now(),
        login_message(&second, "hanako", Some(near_atm())),
    );
    let ring = KeyRing::new(new.clone()).with_previous(vec![old]).unwrap();
    let checks = wanted(
        reader.db(),
        rig.hub.config(),
        &ring,
        &second.phone_up(),
        &payload,
        rig.now(),
    )
    .unwrap();
    assert_eq!(checks.len(), 1, "the password opened and is checked ahead");
    let only_new = KeyRing::new(new.clone());
    let none = wanted(
        reader.db(),
        rig.hub.config(),
        &only_new,
        &second.phone_up(),
        &payload,
        rig.now(),
    )
    .unwrap();
    assert!(none.is_empty());

    // A hub that dropped the previous key refuses the same login.
    let mut without = Rig::with_key(Store::open_test(), test_config(), 6, new);
    without.account("hanako", 100_000);
    let mut third = TestDevice::new("phone-3");
    let h = without.login(&mut third, "hanako");
    assert!(
        matches!(
            &h.result,
            Err(HandleError::Refused {
                reason: RejectReason::Malformed,
                message
            }) if message.starts_with("password")
        ),
        "{:?}",
        h.result
    );
}

/// A previous key verifies only the codes it signed: a code forged with it for a withdrawal
/// registered after the rotation (someone holding the old key and a live transaction id) is
/// refused as invalid, while the genuine code, signed by the new key, is accepted.
#[test]
fn a_previous_key_cannot_vouch_for_a_withdrawal_registered_after_the_rotation() {
    let old = test_hub_key();
    let new = PrivateKey::generate();
    let mut rig = Rig::with_key(Store::open_test(), test_config(), 7, new);
    rig.hub = rig.hub.with_previous_keys(vec![old.clone()]).unwrap();
    rig.account("hanako", 100_000);
    let mut phone = TestDevice::new("phone-1");
    assert_eq!(
        rig.login(&mut phone, "hanako").result,
        Ok(Disposition::Applied)
    );
    let mut atm = rig.atm("atm-1");
    let code = rig.register(&mut phone, "hanako", 10_000);

    let forged = CodeToken::issue(&old, code.tx_id, code.expires_at);
    assert_ne!(forged, code.token);
    let h = rig.atm_send(
        &mut atm,
        AtmUp::CodePresented(CodePresented {
            token: forged.clone(),
        }),
    );
    assert!(
        matches!(
            &h.result,
            Err(HandleError::Refused {
                reason: RejectReason::CodeInvalid,
                ..
            })
        ),
        "{:?}",
        h.result
    );
    let request = rig.present(&mut atm, &code.token, "phone-1");
    assert_eq!(request.tx_id, code.tx_id);
}
