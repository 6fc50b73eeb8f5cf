//! Account-takeover holes, one regression test each, through the hub's real message path
//! (signed envelopes into `Hub::handle` via `testkit::Rig`), real SQLite files where the
//! hole is about files. Each failed on the main of 2026-11-30 (see the closing note of the
//! issue "Account takeover").

use std::os::unix::fs::PermissionsExt;

use qrcash_hub::admin;
use qrcash_hub::handler::Disposition;
use qrcash_hub::testkit::{
    PIN, Rig, TestDevice, confirm_message, funding, login_message, near_atm, seal_for,
};
use qrcash_protocol::messages::{
    AlertAnswered, AlertOutcome, AnswerNewDeviceAlert, AtmState, AtmUp, BalanceQuery,
    BankWithdrawal, BiometricAttestation, BiometricMethod, CassetteState, CassetteStatus,
    ChangePassword, ConfirmRequest, DeclineWithdrawal, Heartbeat, NewDeviceAlert, Payment,
    PhonePush, PhoneUp, RegisterWithdrawal, SessionsEnded, SignOutOtherDevices, TopUp, Transfer,
};
use qrcash_protocol::{Position, RejectReason, SecretField};

/// Osaka, about 400 km from the test ATM in Shibuya.
const OSAKA: (f64, f64) = (34.7025, 135.4959);

/// A rig with `hanako` (100,000 yen) logged in on `phone-1` next to ATM `atm-1`.
fn setup(seed: u64) -> (Rig, TestDevice, TestDevice) {
    let mut rig = Rig::in_memory(seed);
    rig.account("hanako", 100_000);
    let atm = rig.atm("atm-1");
    let mut phone = TestDevice::new("phone-1");
    let h = rig.login(&mut phone, "hanako");
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    (rig, phone, atm)
}

fn frozen(rig: &Rig) -> bool {
    admin::show_account(rig.hub.store(), "hanako")
        .unwrap()
        .account
        .frozen
}

/// Hole 5: `DeclineWithdrawal { not_me: true }` from a device under the new-device
/// restriction froze the owner's account. It may decline; it never freezes.
#[test]
fn not_me_from_a_restricted_device_declines_but_never_freezes_the_owner() {
    let (mut rig, mut phone, mut atm) = setup(501);
    let mut thief = TestDevice::new("phone-osaka");
    let msg = login_message(
        &thief,
        "hanako",
        Some(Position::new(OSAKA.0, OSAKA.1, 20.0)),
    );
    let h = rig.phone(&mut thief, msg);
    match rig.pushes(&h.outgoing, "phone-osaka").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => assert!(r.restriction.is_some(), "restricted"),
        other => panic!("{other:?}"),
    }
    // The owner stands at the ATM; the fraudster's device answers "not me".
    let code = rig.register(&mut phone, "hanako", 10_000);
    rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.phone(
        &mut thief,
        PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
            tx_id: code.tx_id,
            not_me: true,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    assert!(
        !frozen(&rig),
        "a restricted device froze the owner's account"
    );
    // The owner's own "not me" still freezes.
    let code = rig.register(&mut phone, "hanako", 10_000);
    rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.phone(
        &mut phone,
        PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
            tx_id: code.tx_id,
            not_me: true,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert!(frozen(&rig));
}

/// Hole 8: numbers from the wire overflowed in the writer (`sum::<u32>()` over a heartbeat's
/// note counts, `verified_at + skew` with `u64::MAX`), a panic that killed the hub's single
/// writer thread. Now they saturate, and the messages are handled normally.
#[test]
fn numbers_from_the_wire_never_panic_the_writer() {
    let (mut rig, mut phone, mut atm) = setup(502);
    let full = |denomination| CassetteStatus {
        denomination,
        notes: u32::MAX,
        state: CassetteState::Ok,
    };
    let h = rig.atm_send(
        &mut atm,
        AtmUp::Heartbeat(Heartbeat {
            state: AtmState::Idle,
            cassettes: vec![full(10_000), full(10_000), full(1_000), full(1_000)],
            outbox: u32::MAX,
            software: "x".into(),
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    // The note breakdown at presentation sums those counts.
    let code = rig.register(&mut phone, "hanako", 12_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    // A biometric attestation dated at the end of time.
    let mut msg = confirm_message(
        &phone,
        &req,
        Some(qrcash_hub::testkit::PIN),
        Some(near_atm()),
    );
    if let PhoneUp::ConfirmWithdrawal(c) = &mut msg {
        c.identity.biometric = Some(BiometricAttestation {
            method: BiometricMethod::Face,
            verified_at: u64::MAX,
        });
    }
    let h = rig.phone(&mut phone, msg);
    // Handled: ordered on the PIN (the attestation counts for nothing), never a panic.
    assert!(
        h.result == Ok(Disposition::Applied)
            || matches!(&h.result, Err(e) if e.reason() != RejectReason::Malformed),
        "{:?}",
        h.result
    );
}

/// Hole 9: the hub database (argon2 hashes of 4-digit PINs, the ledger) was created 0644
/// with its WAL and SHM. Now 0600, in a 0700 directory it creates.
#[test]
fn the_hub_database_is_readable_by_its_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let path = dir.join("hub.sqlite");
    let store = qrcash_hub::store::Store::open(&path).unwrap();
    let mut rig = Rig::new(store, qrcash_hub::testkit::test_config(), 503);
    rig.account("hanako", 1_000); // something written: WAL and SHM exist
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for name in ["hub.sqlite", "hub.sqlite-wal", "hub.sqlite-shm"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    drop(rig);
    // A database an earlier version left world-readable is tightened when opened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(qrcash_hub::store::Store::open(&path).unwrap());
    assert_eq!(mode(&path), 0o600);
}

/// Hole 7: a login signed by a device's enrolled key but carrying another public key
/// re-keyed the device without any proof that its sender holds the new private key. Now it
/// is dropped like any message whose signature does not hold (audited, never answered),
/// and the enrolled key stays.
#[test]
fn re_keying_requires_a_signature_by_the_new_key() {
    let (mut rig, mut phone, _) = setup(507);
    let enrolled = admin::list_devices(rig.hub.store(), Some("hanako")).unwrap()[0]
        .kid
        .clone();
    let stranger = TestDevice::new("phone-1"); // same id, a key nobody proved
    let msg = login_message(&stranger, "hanako", Some(near_atm()));
    let h = rig.phone(&mut phone, msg); // sealed with the enrolled key
    assert!(h.result.is_err(), "{:?}", h.result);
    assert!(h.outgoing.is_empty(), "never answered");
    let devices = admin::list_devices(rig.hub.store(), Some("hanako")).unwrap();
    assert_eq!(devices[0].kid, enrolled, "the enrolled key stays");
    // Signed by the new key itself, the same login re-keys the device (as a new device).
    let mut rekeyed = TestDevice::new("phone-1");
    let msg = login_message(&rekeyed, "hanako", Some(near_atm()));
    let h = rig.phone(&mut rekeyed, msg);
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    let devices = admin::list_devices(rig.hub.store(), Some("hanako")).unwrap();
    assert_ne!(devices[0].kid, enrolled);
}

/// Hole 11: when the account's only device was revoked (a lost or stolen phone), the next
/// device to log in met no restriction, since no other device was active. It is new like
/// any other, and with no established device to vouch for it, restricted for the habit
/// period.
#[test]
fn after_a_revoke_the_next_device_is_new_and_restricted() {
    let (mut rig, _phone, _) = setup(511);
    rig.account("taro", 0);
    let now = rig.now();
    admin::revoke_device(rig.hub.store_mut(), "phone-1", "lost", now).unwrap();
    let mut next = TestDevice::new("phone-2");
    let h = rig.login(&mut next, "hanako");
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    let result = match rig.pushes(&h.outgoing, "phone-2").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => r,
        other => panic!("{other:?}"),
    };
    assert!(result.new_device);
    let until = result
        .restriction
        .and_then(|r| r.until)
        .expect("restricted for a time");
    let h = rig.phone(
        &mut next,
        PhoneUp::Transfer(qrcash_protocol::messages::Transfer {
            idempotency_key: "t-1".into(),
            to_account: "taro".into(),
            amount: qrcash_protocol::Amount::new(1_000, qrcash_protocol::Currency::JPY),
            memo: None,
        }),
    );
    assert!(
        matches!(&h.result, Err(e) if e.reason() == RejectReason::Restricted { until }),
        "{:?}",
        h.result
    );
    // The account's very first device is not new.
    let mut fresh = Rig::in_memory(512);
    fresh.account("jiro", 1_000);
    let mut first = TestDevice::new("phone-j");
    let h = fresh.login(&mut first, "jiro");
    match fresh.pushes(&h.outgoing, "phone-j").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => assert!(!r.new_device && r.restriction.is_none()),
        other => panic!("{other:?}"),
    }
}

/// Hole 12: top-ups created money from nothing (no funding source, no cap, allowed on a
/// frozen account or from a restricted device). A top-up now draws on a funding account
/// linked to the account at the hub, within daily limits, and is refused while frozen.
#[test]
fn top_ups_come_from_a_linked_funding_account_within_limits() {
    use qrcash_protocol::messages::TopUp;
    let (mut rig, mut phone, _) = setup(512);
    rig.account("taro", 0);
    let balance = |rig: &Rig| {
        admin::show_account(rig.hub.store(), "hanako")
            .unwrap()
            .available
    };
    let top_up = |key: &str, yen: u64, from: &str| {
        PhoneUp::TopUp(TopUp {
            idempotency_key: key.into(),
            amount: qrcash_protocol::Amount::new(yen, qrcash_protocol::Currency::JPY),
            from: from.into(),
        })
    };
    let refused = |h: &qrcash_hub::handler::Handled| match &h.result {
        Err(e) => e.reason(),
        Ok(d) => panic!("expected a refusal, got {d:?}"),
    };
    // No funding account of this account: nothing comes from nowhere, or from taro's bank.
    let h = rig.phone(&mut phone, top_up("t-1", 1_000, "bank-nowhere"));
    assert_eq!(refused(&h), RejectReason::UnknownBankAccount);
    let h = rig.phone(
        &mut phone,
        top_up("t-2", 1_000, &qrcash_hub::testkit::funding("taro")),
    );
    assert_eq!(refused(&h), RejectReason::UnknownBankAccount);
    assert_eq!(balance(&rig), 100_000);
    // From its own funding account, within the limits.
    let own = qrcash_hub::testkit::funding("hanako");
    let h = rig.phone(&mut phone, top_up("t-3", 600_000, &own));
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    assert_eq!(balance(&rig), 700_000);
    // The daily total (1,000,000 by default) is a cap across top-ups.
    let h = rig.phone(&mut phone, top_up("t-4", 600_000, &own));
    assert!(
        matches!(refused(&h), RejectReason::LimitExceeded { .. }),
        "{:?}",
        h.result
    );
    assert_eq!(balance(&rig), 700_000);
    // Frozen ("not me"): no top-up either.
    rig.hub
        .store()
        .db()
        .test_execute("UPDATE accounts SET frozen = 1, frozen_reason = 'test' WHERE id = 'hanako'")
        .unwrap();
    let h = rig.phone(&mut phone, top_up("t-5", 1_000, &own));
    assert_eq!(refused(&h), RejectReason::AccountFrozen);
    assert_eq!(balance(&rig), 700_000);
}

fn jpy(yen: u64) -> qrcash_protocol::Amount {
    qrcash_protocol::Amount::new(yen, qrcash_protocol::Currency::JPY)
}

fn alert_to(rig: &Rig, h: &qrcash_hub::handler::Handled, device: &str) -> NewDeviceAlert {
    match rig.pushes(&h.outgoing, device).pop().map(|c| c.msg) {
        Some(PhonePush::NewDeviceAlert(a)) => a,
        other => panic!("expected an alert to {device}: {other:?}"),
    }
}

fn answer(rig: &mut Rig, dev: &mut TestDevice, alert_id: &str, not_me: bool) -> AlertAnswered {
    let h = rig.phone(
        dev,
        PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
            alert_id: alert_id.into(),
            not_me,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    match rig.pushes(&h.outgoing, &dev.id).pop().map(|c| c.msg) {
        Some(PhonePush::AlertAnswered(a)) => a,
        other => panic!("expected AlertAnswered: {other:?}"),
    }
}

fn restricted_until(rig: &Rig, h: &qrcash_hub::handler::Handled, device: &str) -> u64 {
    match rig
        .pushes(&h.outgoing, device)
        .first()
        .map(|c| c.msg.clone())
    {
        Some(PhonePush::LoginResult(r)) => {
            assert!(r.new_device);
            r.restriction
                .and_then(|r| r.until)
                .expect("restricted for a time")
        }
        other => panic!("{other:?}"),
    }
}

/// Every money-out request a phone can send, with fresh idempotency keys.
fn money_out(tag: &str, from: &TestDevice, owners_request: &ConfirmRequest) -> Vec<PhoneUp> {
    let key = |k: &str| format!("{tag}-{k}");
    vec![
        PhoneUp::Transfer(Transfer {
            idempotency_key: key("tr"),
            to_account: "taro".into(),
            amount: jpy(30_000),
            memo: None,
        }),
        PhoneUp::Payment(Payment {
            idempotency_key: key("pay"),
            merchant_id: "cafe".into(),
            amount: jpy(1_000),
        }),
        PhoneUp::BankWithdrawal(BankWithdrawal {
            idempotency_key: key("bw"),
            bank_account: "bank-hanako".into(),
            amount: jpy(20_000),
        }),
        PhoneUp::TopUp(TopUp {
            idempotency_key: key("tu"),
            amount: jpy(1_000),
            from: funding("hanako"),
        }),
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(10_000),
        }),
        confirm_message(from, owners_request, Some(PIN), Some(near_atm())),
    ]
}

/// A rig for hole 1: `setup` plus `taro`, a merchant and a payout account for hanako, and
/// a withdrawal of the owner's waiting at the ATM.
fn hole_one(seed: u64) -> (Rig, TestDevice, ConfirmRequest) {
    let (mut rig, mut phone, mut atm) = setup(seed);
    rig.account("taro", 0);
    rig.merchant("cafe");
    rig.bank_account("bank-hanako", "hanako");
    let code = rig.register(&mut phone, "hanako", 20_000);
    let request = rig.present(&mut atm, &code.token, "phone-1");
    (rig, phone, request)
}

/// Hole 1: a new device that claimed the owner's last position at login was judged "same
/// person" and free at once. A claim is not evidence: it is restricted, and every money-out
/// function (and confirming the owner's waiting withdrawal) is refused with `Restricted`
/// while nothing moves; once the owner approves it from the established phone, they pass.
#[test]
fn a_claimed_position_next_to_the_owner_frees_nothing_until_the_owner_approves() {
    let (mut rig, mut phone, request) = hole_one(5_011);
    let mut thief = TestDevice::new("phone-thief");
    let msg = login_message(&thief, "hanako", Some(near_atm())); // the owner's own spot
    let h = rig.phone(&mut thief, msg);
    let until = restricted_until(&rig, &h, "phone-thief");
    let alert = alert_to(&rig, &h, "phone-1");
    assert_eq!(alert.position, None, "a claim is not shown as a position");
    let ledger = |rig: &Rig| {
        let report = admin::ledger_check(rig.hub.store()).unwrap();
        assert!(report.is_ok(), "{report}");
        ["hanako", "taro"]
            .map(|a| qrcash_hub::store::ledger::customer_balances(rig.hub.store().db(), a))
            .map(Result::unwrap)
    };
    let before = ledger(&rig);
    for (i, msg) in money_out("t", &thief, &request).into_iter().enumerate() {
        let h = rig.phone(&mut thief, msg);
        assert!(
            matches!(&h.result, Err(e) if e.reason() == RejectReason::Restricted { until }),
            "request {i}: {:?}",
            h.result
        );
    }
    assert_eq!(ledger(&rig), before, "nothing moved");
    assert_eq!(
        answer(&mut rig, &mut phone, &alert.alert_id, false).outcome,
        AlertOutcome::Approved
    );
    let mut requests = money_out("a", &thief, &request);
    let owners = requests.pop();
    for (i, msg) in requests.into_iter().enumerate() {
        let h = rig.phone(&mut thief, msg);
        assert_eq!(
            h.result,
            Ok(Disposition::Applied),
            "request {i}: {:?}",
            h.result
        );
    }
    assert_ne!(ledger(&rig), before);
    // The owner's own withdrawal stays the owner's phone's to confirm.
    let h = rig.phone(&mut thief, owners.unwrap());
    assert!(
        matches!(&h.result, Err(e) if matches!(e.reason(), RejectReason::TransactionMismatch { .. })),
        "{:?}",
        h.result
    );
}

/// Hole 1, the approval: only an established device's answer counts, only for the key the
/// alert was about, and only the first answer.
#[test]
fn only_an_established_device_approves_and_only_the_key_it_was_told_about() {
    let (mut rig, mut phone, _) = hole_one(5_012);
    // Two new devices: the second one's alert goes to phone-1 only, never to the first
    // newcomer (which is restricted), so a newcomer cannot approve another.
    let mut first = TestDevice::new("phone-a");
    let msg = login_message(&first, "hanako", Some(near_atm()));
    let h = rig.phone(&mut first, msg);
    let alert_a = alert_to(&rig, &h, "phone-1");
    let mut second = TestDevice::new("phone-b");
    let msg = login_message(&second, "hanako", Some(near_atm()));
    let h = rig.phone(&mut second, msg);
    assert!(
        rig.pushes(&h.outgoing, "phone-a").is_empty(),
        "a restricted device is not asked"
    );
    let alert_b = alert_to(&rig, &h, "phone-1");
    // phone-a answering phone-1's alert about phone-b: not its alert, and it is restricted.
    let h = rig.phone(
        &mut first,
        PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
            alert_id: alert_b.alert_id.clone(),
            not_me: false,
        }),
    );
    assert!(
        matches!(&h.result, Err(e) if matches!(e.reason(), RejectReason::Restricted { .. })),
        "{:?}",
        h.result
    );
    assert!(restricted(&rig, "phone-b"));
    // phone-a is re-keyed (by whoever holds the password) after its alert went out: the
    // owner's approval of the old alert lifts nothing; the new key has its own alert.
    let mut rekeyed = TestDevice::new("phone-a");
    let msg = login_message(&rekeyed, "hanako", Some(near_atm()));
    let h = rig.phone(&mut rekeyed, msg);
    let alert_a2 = alert_to(&rig, &h, "phone-1");
    assert_eq!(
        answer(&mut rig, &mut phone, &alert_a.alert_id, false).outcome,
        AlertOutcome::Outdated
    );
    assert!(restricted(&rig, "phone-a"));
    // "Not me" to the new alert; a later "this was me" to it changes nothing.
    assert_eq!(
        answer(&mut rig, &mut phone, &alert_a2.alert_id, true).outcome,
        AlertOutcome::RevokedAndFrozen
    );
    assert_eq!(
        answer(&mut rig, &mut phone, &alert_a2.alert_id, false).outcome,
        AlertOutcome::RevokedAndFrozen
    );
    assert!(frozen(&rig));
    let devices = admin::list_devices(rig.hub.store(), Some("hanako")).unwrap();
    let a = devices.iter().find(|d| d.id == "phone-a").unwrap();
    assert_eq!(a.status, qrcash_hub::store::rows::DeviceStatus::Revoked);
}

fn restricted(rig: &Rig, device: &str) -> bool {
    admin::list_restrictions(rig.hub.store(), rig.now())
        .unwrap()
        .iter()
        .any(|d| d.id == device)
}

fn refused_with(h: &qrcash_hub::handler::Handled) -> RejectReason {
    match &h.result {
        Err(e) => e.reason(),
        Ok(d) => panic!("expected a refusal, got {d:?}"),
    }
}

fn balance_query() -> PhoneUp {
    PhoneUp::BalanceQuery(BalanceQuery {
        account: "hanako".into(),
        history: 0,
    })
}

fn change_password(
    rig: &mut Rig,
    dev: &mut TestDevice,
    current: &str,
    new: &str,
) -> qrcash_hub::handler::Handled {
    let msg = PhoneUp::ChangePassword(ChangePassword {
        current_password: seal_for(dev, SecretField::CurrentPassword, current),
        new_password: seal_for(dev, SecretField::NewPassword, new),
    });
    rig.phone(dev, msg)
}

fn sessions_ended(rig: &Rig, h: &qrcash_hub::handler::Handled, device: &str) -> SessionsEnded {
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    match rig.pushes(&h.outgoing, device).pop().map(|c| c.msg) {
        Some(PhonePush::SessionsEnded(s)) => s,
        other => panic!("expected SessionsEnded: {other:?}"),
    }
}

/// Hole 2: changing the password left the fraudster's device logged in. A change from the
/// owner's phone ends every other device's session, and the old password no longer logs in;
/// a restricted device can neither change the password nor sign the owner out.
#[test]
fn a_password_change_from_the_owners_phone_signs_every_other_device_out() {
    let (mut rig, mut phone, _) = setup(521);
    let mut thief = TestDevice::new("phone-thief");
    let msg = login_message(&thief, "hanako", Some(near_atm()));
    rig.phone(&mut thief, msg);
    assert_eq!(
        rig.phone(&mut thief, balance_query()).result,
        Ok(Disposition::Applied)
    );
    // The newcomer may not lock the owner out.
    let old = qrcash_hub::testkit::password("hanako");
    let h = change_password(&mut rig, &mut thief, &old, "the thief's choice");
    assert!(matches!(refused_with(&h), RejectReason::Restricted { .. }));
    let h = rig.phone(
        &mut thief,
        PhoneUp::SignOutOtherDevices(SignOutOtherDevices {}),
    );
    assert!(matches!(refused_with(&h), RejectReason::Restricted { .. }));
    // A wrong current password changes nothing.
    let h = change_password(&mut rig, &mut phone, "not it at all", "brand new secret");
    assert_eq!(refused_with(&h), RejectReason::BadCredentials);
    let h = change_password(&mut rig, &mut phone, &old, "short");
    assert_eq!(refused_with(&h), RejectReason::Malformed);
    assert_eq!(
        rig.phone(&mut thief, balance_query()).result,
        Ok(Disposition::Applied)
    );

    let h = change_password(&mut rig, &mut phone, &old, "brand new secret");
    let ended = sessions_ended(&rig, &h, "phone-1");
    assert!(ended.password_changed);
    assert_eq!(ended.signed_out, vec!["phone-thief".to_owned()]);
    let h = rig.phone(&mut thief, balance_query());
    assert_eq!(refused_with(&h), RejectReason::NotLoggedIn);
    let msg = login_message(&thief, "hanako", Some(near_atm())); // the old password
    let h = rig.phone(&mut thief, msg);
    assert_eq!(refused_with(&h), RejectReason::BadCredentials);
    // The owner's own session goes on.
    assert_eq!(
        rig.phone(&mut phone, balance_query()).result,
        Ok(Disposition::Applied)
    );
}

/// Hole 2, the rest: "sign out all other devices" from the owner's phone, and the operator's
/// password reset and sign-out, which end every session of the account.
#[test]
fn sign_out_others_and_the_operators_reset_end_sessions() {
    let (mut rig, mut phone, _) = setup(522);
    let mut thief = TestDevice::new("phone-thief");
    let msg = login_message(&thief, "hanako", Some(near_atm()));
    rig.phone(&mut thief, msg);
    let h = rig.phone(
        &mut phone,
        PhoneUp::SignOutOtherDevices(SignOutOtherDevices {}),
    );
    let ended = sessions_ended(&rig, &h, "phone-1");
    assert!(!ended.password_changed);
    assert_eq!(ended.signed_out, vec!["phone-thief".to_owned()]);
    assert_eq!(
        refused_with(&rig.phone(&mut thief, balance_query())),
        RejectReason::NotLoggedIn
    );
    // Signed out but holding the password, it can log in again (only a password change
    // keeps it out); the operator's reset then signs out everyone, the owner included.
    let msg = login_message(&thief, "hanako", Some(near_atm()));
    rig.phone(&mut thief, msg);
    assert_eq!(
        rig.phone(&mut thief, balance_query()).result,
        Ok(Disposition::Applied)
    );
    let now = rig.now();
    let out = admin::change_password(
        rig.hub.store_mut(),
        "hanako",
        "support's reset 1",
        qrcash_hub::identity::HashCost::TEST,
        now,
    )
    .unwrap();
    assert_eq!(out, vec!["phone-1".to_owned(), "phone-thief".to_owned()]);
    for dev in [&mut phone, &mut thief] {
        assert_eq!(
            refused_with(&rig.phone(dev, balance_query())),
            RejectReason::NotLoggedIn
        );
    }
    let out = admin::sign_out_devices(rig.hub.store_mut(), "hanako", now).unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert!(admin::sign_out_devices(rig.hub.store_mut(), "nobody", now).is_err());
}

fn login_with(rig: &mut Rig, dev: &mut TestDevice, account: &str, password: &str) -> RejectReason {
    let mut msg = login_message(dev, account, Some(near_atm()));
    if let PhoneUp::Login(l) = &mut msg {
        l.password = seal_for(dev, SecretField::Password, password);
    }
    let h = rig.phone(dev, msg);
    match h.result {
        Ok(_) => RejectReason::Internal, // stands for "accepted" in these tests
        Err(e) => e.reason(),
    }
}

/// Hole 3: password guessing was unlimited, each guess costing argon2 on the writer, and an
/// unknown account answered at once. Now the device id and the account name each get five
/// free failures, then a lock that doubles; a locked attempt is refused before any argon2
/// runs (even with the right password); the owner's own phone is not locked out by guesses
/// from elsewhere; and an unknown account costs exactly one argon2 check like a known one.
#[test]
fn password_guessing_is_throttled_per_device_and_account_before_any_argon2() {
    let (mut rig, mut phone, _) = setup(531);
    let right = qrcash_hub::testkit::password("hanako");
    let accepted = RejectReason::Internal;
    let mut thief = TestDevice::new("phone-thief");
    for _ in 0..6 {
        assert_eq!(
            login_with(&mut rig, &mut thief, "hanako", "guess"),
            RejectReason::BadCredentials
        );
    }
    let until = rig.now() + 30;
    let evaluated = qrcash_hub::identity::evaluations_on_this_thread();
    assert_eq!(
        login_with(&mut rig, &mut thief, "hanako", &right),
        RejectReason::LoginThrottled { until },
        "locked: even the right password is not evaluated"
    );
    // A fresh device id does not help: the account name is locked too.
    let mut another = TestDevice::new("phone-thief-2");
    assert_eq!(
        login_with(&mut rig, &mut another, "hanako", &right),
        RejectReason::LoginThrottled { until }
    );
    assert_eq!(
        qrcash_hub::identity::evaluations_on_this_thread(),
        evaluated,
        "a throttled login costs no argon2"
    );
    // The owner's established phone with its enrolled key logs in all the same.
    assert_eq!(login_with(&mut rig, &mut phone, "hanako", &right), accepted);
    // The lock lifts by itself; the next failure locks for twice as long.
    rig.clock.set(until);
    assert_eq!(
        login_with(&mut rig, &mut another, "hanako", "guess"),
        RejectReason::BadCredentials
    );
    assert_eq!(
        login_with(&mut rig, &mut another, "hanako", &right),
        RejectReason::LoginThrottled { until: until + 60 }
    );

    // An unknown account costs one argon2 check, as a known one does, and answers the same.
    let mut probe = TestDevice::new("phone-probe");
    for account in ["hanako", "nobody-at-all"] {
        let before = qrcash_hub::identity::evaluations_on_this_thread();
        rig.clock.advance(std::time::Duration::from_secs(3_600));
        let reason = login_with(&mut rig, &mut probe, account, "guess");
        assert_eq!(reason, RejectReason::BadCredentials, "{account}");
        assert_eq!(
            qrcash_hub::identity::evaluations_on_this_thread() - before,
            1,
            "{account}"
        );
    }
}

fn count(rig: &Rig, table: &str) -> i64 {
    rig.hub
        .store()
        .db()
        .read_i64(&format!("SELECT COUNT(*) FROM {table}"))
        .unwrap()
}

/// Hole 4: every refused self-signed login (a throw-away key) left a replay window, a
/// processed record and an audit row forever. Now it leaves nothing durable: no window, no
/// processed record, no audit row, only pruned traces (`login_refusals`, failure counts)
/// that the sweeper forgets; and one device id gets a bounded number of logins a minute.
#[test]
fn refused_self_signed_logins_leave_nothing_durable() {
    let (mut rig, mut phone, _) = setup(541);
    let tables = ["replay_windows", "processed", "audit"];
    let before: Vec<i64> = tables.iter().map(|t| count(&rig, t)).collect();
    for i in 0..40 {
        let mut junk = TestDevice::new(&format!("junk-{i}"));
        let reason = login_with(&mut rig, &mut junk, &format!("acct-{i}"), "guess");
        assert_eq!(reason, RejectReason::BadCredentials);
    }
    let after: Vec<i64> = tables.iter().map(|t| count(&rig, t)).collect();
    assert_eq!(after, before, "{tables:?}");
    assert_eq!(count(&rig, "login_refusals"), 40);
    assert_eq!(
        count(&rig, "login_failures"),
        80,
        "one per device id, one per name"
    );
    let cfg = rig.hub.config().auth.clone();
    rig.clock.advance(std::time::Duration::from_secs(
        cfg.login_lock_max_s.max(cfg.login_refusal_retention_s) + 1,
    ));
    let (_, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.login_traces_pruned, 80 + 40);
    assert_eq!(
        count(&rig, "login_refusals") + count(&rig, "login_failures"),
        0
    );

    // The owner's phone: at most `logins_per_device_per_minute` logins a minute.
    let right = qrcash_hub::testkit::password("hanako");
    let mut results = Vec::new();
    for _ in 0..cfg.logins_per_device_per_minute + 1 {
        results.push(login_with(&mut rig, &mut phone, "hanako", &right));
    }
    let until = rig.now() + 60;
    assert_eq!(results.pop(), Some(RejectReason::LoginThrottled { until }));
    assert!(
        results.iter().all(|r| *r == RejectReason::Internal),
        "{results:?}"
    );
}

/// Hole 3, the writer: passwords and PINs are checked ahead, beside the writer
/// (`qrcash_hub::secrets`), and the writer uses exactly those answers, evaluating no argon2
/// itself; a check that does not fit (another hash, another secret) is ignored, and a login
/// its throttle refuses needs no check at all.
#[test]
fn passwords_and_pins_are_checked_ahead_and_the_writer_runs_no_argon2() {
    use qrcash_hub::handler::Incoming;
    use qrcash_hub::identity::{check_ahead, evaluations_on_this_thread};
    use qrcash_hub::secrets::wanted;
    use qrcash_hub::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let mut rig = Rig::new(
        Store::open(&path).unwrap(),
        qrcash_hub::testkit::test_config(),
        551,
    );
    rig.account("hanako", 100_000);
    let mut atm = rig.atm("atm-1");
    let mut phone = TestDevice::new("phone-1");
    let reader = Store::open_reader(&path).unwrap();
    let cfg = rig.hub.config().clone();
    let ahead = |rig: &mut Rig, dev: &mut TestDevice, msg: PhoneUp| {
        let hub = rig.hub_id();
        let payload = dev.message(&hub, rig.now(), msg);
        let key = qrcash_hub::keyring::KeyRing::new(qrcash_hub::testkit::test_hub_key());
        let list = wanted(
            reader.db(),
            &cfg,
            &key,
            &dev.phone_up(),
            &payload,
            rig.now(),
        )
        .unwrap();
        let mut m = Incoming::new(dev.phone_up(), payload);
        m.checked = list
            .iter()
            .map(|w| check_ahead(&w.secret, &w.phc))
            .collect();
        (m, list.len())
    };

    // Login: one check ahead, none on the writer.
    let msg = login_message(&phone, "hanako", Some(near_atm()));
    let (m, n) = ahead(&mut rig, &mut phone, msg);
    assert_eq!(n, 1);
    let before = evaluations_on_this_thread();
    let h = rig.hub.handle_batch(&[m]).pop().unwrap();
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    assert_eq!(
        evaluations_on_this_thread(),
        before,
        "the writer ran argon2"
    );

    // A PIN in a confirmation likewise.
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let msg = confirm_message(&phone, &req, Some(PIN), Some(near_atm()));
    let (m, n) = ahead(&mut rig, &mut phone, msg);
    assert_eq!(n, 1);
    let before = evaluations_on_this_thread();
    let h = rig.hub.handle_batch(&[m]).pop().unwrap();
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    assert_eq!(evaluations_on_this_thread(), before);

    // A check that is not for this secret and hash is not used: the writer checks itself.
    let mut other = TestDevice::new("phone-2");
    let msg = login_message(&other, "hanako", None);
    let (mut m, _) = ahead(&mut rig, &mut other, msg);
    m.checked = vec![check_ahead(
        "something else",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
    )];
    m.checked[0].ok = true;
    let before = evaluations_on_this_thread();
    rig.hub.handle_batch(&[m]);
    assert_eq!(evaluations_on_this_thread(), before + 1);

    // Not authentic (a login carrying one key, signed by another): nothing wanted.
    let mut liar = TestDevice::new("phone-liar");
    let carried = TestDevice::new("phone-liar");
    let msg = login_message(&carried, "hanako", None);
    let (_, n) = ahead(&mut rig, &mut liar, msg);
    assert_eq!(n, 0, "a forged message costs no check");
    // A PIN for no withdrawal this device has at an ATM: nothing wanted.
    let msg = confirm_message(&phone, &req, Some(PIN), Some(near_atm()));
    let (_, n) = ahead(&mut rig, &mut phone, msg);
    assert_eq!(n, 0, "the withdrawal is no longer presented");

    // Throttled: nothing wanted.
    let mut thief = TestDevice::new("phone-thief");
    for _ in 0..6 {
        login_with(&mut rig, &mut thief, "hanako", "guess");
    }
    let msg = login_message(&thief, "hanako", None);
    let (_, n) = ahead(&mut rig, &mut thief, msg);
    assert_eq!(n, 0, "a throttled login needs no check");
}

/// Hole 6: passwords and PINs travelled in the clear inside the signed (not encrypted) JWS,
/// so anyone who could read the broker read them. They travel sealed to the hub now: the
/// bytes on the broker never contain them, and a sealed password lifted from the owner's
/// login opens neither in the thief's own login nor in a re-keying login for the owner's
/// device id; a plain-text password is not a valid message any more.
#[test]
fn passwords_and_pins_are_unreadable_on_the_broker_and_useless_elsewhere() {
    let mut rig = Rig::in_memory(561);
    rig.account("hanako", 100_000);
    let mut atm = rig.atm("atm-1");
    let hub = rig.hub_id();
    let claims_text = |bytes: &[u8]| {
        let text = std::str::from_utf8(bytes).unwrap();
        let claims = text.split('.').nth(1).unwrap();
        String::from_utf8(qrcash_protocol::jws::unb64(claims).unwrap()).unwrap()
    };

    let mut phone = TestDevice::new("phone-1");
    let msg = login_message(&phone, "hanako", Some(near_atm()));
    let PhoneUp::Login(login) = &msg else {
        unreachable!()
    };
    let captured = login.password.clone();
    let bytes = phone.message(&hub, rig.now(), msg);
    let on_the_broker = claims_text(&bytes);
    assert!(!on_the_broker.contains(&qrcash_hub::testkit::password("hanako")));
    assert!(
        on_the_broker.contains(r#""password":{"kid""#),
        "{on_the_broker}"
    );
    let h = rig.hub.handle(&phone.phone_up(), &bytes);
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);

    // The PIN likewise.
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let msg = confirm_message(&phone, &req, Some("8642"), Some(near_atm()));
    let bytes = phone.message(&hub, rig.now(), msg);
    assert!(!claims_text(&bytes).contains("8642"));

    // Lifted into the thief's own login, or a re-keying login for phone-1: does not open.
    let malformed = |h: &qrcash_hub::handler::Handled| matches!(&h.result, Err(e) if e.reason() == RejectReason::Malformed);
    let mut thief = TestDevice::new("phone-thief");
    let mut rekey = TestDevice::new("phone-1");
    for dev in [&mut thief, &mut rekey] {
        let mut msg = login_message(dev, "hanako", Some(near_atm()));
        if let PhoneUp::Login(l) = &mut msg {
            l.password = captured.clone();
        }
        let h = rig.phone(dev, msg);
        assert!(malformed(&h), "{}: {:?}", dev.id, h.result);
    }
    let devices = admin::list_devices(rig.hub.store(), Some("hanako")).unwrap();
    assert_eq!(devices.len(), 1, "nobody else got in");

    // The old wire format, a password as a plain string: not a valid message.
    let mut json = serde_json::to_value(login_message(&phone, "hanako", None)).unwrap();
    json["password"] = serde_json::Value::String(qrcash_hub::testkit::password("hanako"));
    let claims = phone.claims(&hub, rig.now(), json);
    let h = rig.hub.handle(&phone.phone_up(), &phone.seal(&claims));
    assert!(malformed(&h), "{:?}", h.result);
}

/// An adversarial review of the fixes above (holes 2, 3, 4) found these: waiting an hour no
/// longer resets a guesser's count for a real account; a device enrolled in the fraudster's
/// own account cannot spray other accounts; a wrong current password in `ChangePassword` is
/// throttled like a wrong login; a revoked device learns nothing about a password.
#[test]
fn the_throttle_cannot_be_washed_out_waited_out_or_sidestepped() {
    let (mut rig, mut phone, _) = setup(571);
    let right = qrcash_hub::testkit::password("hanako");

    // Waiting out the lock and the sweeper keeps a real account's count: the next failure
    // locks for twice as long, not from zero.
    let mut thief = TestDevice::new("phone-thief");
    for _ in 0..6 {
        login_with(&mut rig, &mut thief, "hanako", "guess");
    }
    rig.clock.advance(std::time::Duration::from_secs(2 * 3_600));
    rig.hub.sweep().unwrap();
    let mut fresh = TestDevice::new("phone-thief-2");
    assert_eq!(
        login_with(&mut rig, &mut fresh, "hanako", "guess"),
        RejectReason::BadCredentials
    );
    let until = rig.now() + 60;
    assert_eq!(
        login_with(&mut rig, &mut fresh, "hanako", &right),
        RejectReason::LoginThrottled { until },
        "the seventh failure locks for 60 s"
    );

    // A device enrolled in the fraudster's own account cannot spray other accounts from it:
    // it is refused before any password is checked (and its own logins clear nothing).
    rig.account("mallory", 0);
    let mut sprayer = TestDevice::new("phone-sprayer");
    let own = qrcash_hub::testkit::password("mallory");
    assert_eq!(
        login_with(&mut rig, &mut sprayer, "mallory", &own),
        RejectReason::Internal
    );
    let before = qrcash_hub::identity::evaluations_on_this_thread();
    for i in 0..20 {
        assert_eq!(
            login_with(&mut rig, &mut sprayer, &format!("victim-{i}"), "guess"),
            RejectReason::BadCredentials
        );
    }
    assert_eq!(
        qrcash_hub::identity::evaluations_on_this_thread(),
        before,
        "no password of another account is ever checked for it"
    );

    // Wrong current passwords in ChangePassword count like wrong logins.
    rig.clock
        .advance(std::time::Duration::from_secs(40 * 86_400));
    rig.hub.sweep().unwrap();
    login_with(&mut rig, &mut phone, "hanako", &right);
    for _ in 0..6 {
        let h = change_password(&mut rig, &mut phone, "not it", "brand new secret");
        assert_eq!(refused_with(&h), RejectReason::BadCredentials);
    }
    let h = change_password(&mut rig, &mut phone, &right, "brand new secret");
    assert!(
        matches!(refused_with(&h), RejectReason::LoginThrottled { .. }),
        "{:?}",
        h.result
    );

    // A revoked device gets the same answer, and no argon2, right password or wrong.
    let now = rig.now();
    admin::revoke_device(rig.hub.store_mut(), "phone-1", "stolen", now).unwrap();
    let before = qrcash_hub::identity::evaluations_on_this_thread();
    for password in [right.as_str(), "guess"] {
        assert_eq!(
            login_with(&mut rig, &mut phone, "hanako", password),
            RejectReason::DeviceRevoked
        );
    }
    assert_eq!(qrcash_hub::identity::evaluations_on_this_thread(), before);
}
