//! Pure-handler tests: real keys, real signatures, real SQLite, no MQTT.

use std::time::Duration;

use qrcash_protocol::messages::{
    AbortReason, AtmDown, AtmUp, CodePresented, DeclineWithdrawal, DispenseOutcome, LimitKind,
    OrderRefused, PhonePush, PhoneUp, ReceiptStatus, RegisterWithdrawal, SessionCancelled,
};
use qrcash_protocol::{Amount, Claims, Currency, RejectReason, topics};

use super::{Disposition, HandleError};
use crate::admin;
use crate::store::audit;
use crate::store::ledger as books;
use crate::testkit::*;
use crate::withdrawal::Phase;

/// The report grace of the test configuration.
const GRACE: u64 = 3600;

fn resolution(dispensed: u64) -> admin::Resolution {
    admin::Resolution {
        dispensed,
        operator: "ops-1".into(),
        reason: "cash counted at the ATM".into(),
    }
}

fn jpy(v: u64) -> Amount {
    Amount::new(v, Currency::JPY)
}

/// A rig with account `hanako` (100,000 yen) logged in on `phone` and ATM `atm-1`.
fn setup(seed: u64) -> (Rig, TestDevice, TestDevice) {
    let mut rig = Rig::in_memory(seed);
    rig.account("hanako", 100_000);
    let atm = rig.atm("atm-1");
    let mut phone = TestDevice::new("phone-1");
    let h = rig.login(&mut phone, "hanako");
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    (rig, phone, atm)
}

fn refused(h: &super::Handled) -> RejectReason {
    match &h.result {
        Err(e) => e.reason(),
        Ok(d) => panic!("expected a refusal, got {d:?}"),
    }
}

fn rejected_reason(rig: &Rig, h: &super::Handled, to: &str, atm: bool) -> RejectReason {
    if atm {
        match rig.downs(&h.outgoing, to).pop().map(|c| c.msg) {
            Some(AtmDown::Rejected(r)) => r.reason,
            other => panic!("expected Rejected to {to}, got {other:?}"),
        }
    } else {
        match rig.pushes(&h.outgoing, to).pop().map(|c| c.msg) {
            Some(PhonePush::Rejected(r)) => r.reason,
            other => panic!("expected Rejected to {to}, got {other:?}"),
        }
    }
}

fn balances(rig: &Rig, account: &str) -> (u64, u64) {
    books::customer_balances(rig.hub.store().db(), account).unwrap()
}

fn phase(rig: &Rig, tx: &qrcash_protocol::TxId) -> Phase {
    crate::store::rows::withdrawal(rig.hub.store().db(), tx)
        .unwrap()
        .unwrap()
        .phase
}

fn assert_books(rig: &Rig) {
    let r = admin::ledger_check(rig.hub.store()).unwrap();
    assert!(r.is_ok(), "{r}");
}

#[test]
fn a_withdrawal_goes_from_code_to_cash_to_receipt() {
    let (mut rig, mut phone, mut atm) = setup(1);
    let code = rig.register(&mut phone, "hanako", 30_000);
    assert_eq!(code.amount, jpy(30_000));
    assert_eq!(code.expires_at, T0 + 600);
    assert!(code.qr_svg.contains("<svg") && !code.qr_png.is_empty());

    let req = rig.present(&mut atm, &code.token, "phone-1");
    assert_eq!(req.tx_id, code.tx_id);
    assert_eq!(req.atm.atm_id, "atm-1");
    assert_eq!(req.confirm_by, T0 + 120);
    assert!(req.auth.pin && req.auth.location && !req.auth.biometric);
    let codes: Vec<&str> = req.warnings.iter().map(|w| w.code.as_str()).collect();
    assert!(
        codes.contains(&"general") && codes.contains(&"first_use_of_atm"),
        "{codes:?}"
    );
    assert!(req.warnings.iter().any(|w| w.lang == "ja"));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Presented);
    // No money moved before the confirmation.
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));

    rig.clock.advance(Duration::from_secs(20));
    let h = rig.confirm(&mut phone, &req);
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
    let order = rig.order(&h.outgoing, "atm-1").expect("dispense order");
    assert!(order.notes_match_amount());
    assert_eq!(order.notes[0].denomination, 10_000);
    assert_eq!(order.atm_id, "atm-1");
    assert_eq!(balances(&rig, "hanako"), (70_000, 30_000));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Ordered);
    assert_books(&rig);

    let h = rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 30_000);
    assert_eq!(h.result, Ok(Disposition::Applied));
    let downs = rig.downs(&h.outgoing, "atm-1");
    assert!(matches!(&downs[0].msg, AtmDown::Ack(a) if a.ids.len() == 1));
    let receipt = match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::Receipt(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(receipt.status, ReceiptStatus::Completed);
    assert_eq!(receipt.settled, jpy(30_000));
    assert_eq!(receipt.balance, jpy(70_000));
    assert_eq!(balances(&rig, "hanako"), (70_000, 0));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Dispensed);
    // The cash is owed by the machine it left: one cash account per ATM.
    let cash = crate::ledger::LedgerAccount::AtmCash("atm-1".into(), Currency::JPY);
    assert_eq!(books::balance(rig.hub.store().db(), &cash).unwrap(), 30_000);
    assert_books(&rig);
    assert!(admin::unsettled(rig.hub.store()).unwrap().is_empty());
}

#[test]
fn the_confirm_request_answers_the_atm_and_replies_carry_re() {
    let (mut rig, mut phone, mut atm) = setup(2);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let claims = atm.claims(
        &rig.hub_id(),
        rig.now(),
        AtmUp::CodePresented(CodePresented {
            token: code.token.clone(),
        }),
    );
    let h = rig.hub.handle(&atm.atm_up(), &atm.seal(&claims));
    let downs = rig.downs(&h.outgoing, "atm-1");
    assert!(matches!(downs[0].msg, AtmDown::AwaitConfirmation(_)));
    assert!(matches!(&downs[1].msg, AtmDown::Ack(a) if a.ids == vec![claims.jti.clone()]));
    assert!(
        downs
            .iter()
            .all(|d| d.re.as_deref() == Some(claims.jti.as_str()))
    );
    // The push to the phone is unsolicited: no `re`.
    let push = rig.pushes(&h.outgoing, "phone-1");
    assert_eq!(push[0].re, None);
    assert_eq!(push[0].aud, "phone-1");
}

/// `again` repeats `before` message by message: same topic, addressee, `re` and body, in a
/// fresh envelope (a new `jti`, a higher `seq`, `iat` now, the same lifetime), so that a
/// receiver's replay window and freshness rules accept it.
fn assert_repeated(rig: &Rig, before: &[super::Outgoing], again: &[super::Outgoing]) {
    assert_eq!(before.len(), again.len());
    for (a, b) in before.iter().zip(again) {
        assert_eq!(a.topic, b.topic);
        let x: Claims<serde_json::Value> = open(a, &rig.hub_key());
        let y: Claims<serde_json::Value> = open(b, &rig.hub_key());
        assert_eq!(
            (&x.aud, &x.re, &x.msg),
            (&y.aud, &y.re, &y.msg),
            "the same message"
        );
        assert!(y.seq > x.seq, "a fresh seq: {} then {}", x.seq, y.seq);
        assert_ne!(x.jti, y.jti);
        assert_eq!(y.iat, rig.now());
        assert_eq!(y.exp - y.iat, x.exp - x.iat, "the same lifetime");
    }
}

#[test]
fn a_duplicate_report_is_acked_again_and_applied_once() {
    let (mut rig, mut phone, mut atm) = setup(3);
    let code = rig.register(&mut phone, "hanako", 20_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    // From the outbox: valid for 7 days, as the agent sends it.
    let mut claims = atm.claims(
        &rig.hub_id(),
        rig.now(),
        report_message(&order, DispenseOutcome::Dispensed, 20_000),
    );
    claims.exp = rig.now() + 7 * 86_400;
    let bytes = atm.seal(&claims);
    let first = rig.hub.handle(&atm.atm_up(), &bytes);
    assert_eq!(first.result, Ok(Disposition::Applied));
    let second = rig.hub.handle(&atm.atm_up(), &bytes);
    assert_eq!(second.result, Ok(Disposition::Duplicate));
    assert_repeated(&rig, &first.outgoing, &second.outgoing);
    // Resent after the first answers' `exp` (5.5 minutes): still answers the ATM can accept.
    rig.clock.advance(Duration::from_secs(330));
    let late = rig.hub.handle(&atm.atm_up(), &bytes);
    assert_eq!(late.result, Ok(Disposition::Duplicate));
    assert_repeated(&rig, &second.outgoing, &late.outgoing);
    for o in &late.outgoing {
        let c: Claims<serde_json::Value> = open(o, &rig.hub_key());
        assert!(c.iat == rig.now() && c.exp > rig.now(), "{c:?}");
    }
    assert_eq!(balances(&rig, "hanako"), (80_000, 0));
    assert_books(&rig);
    assert_eq!(audit::count(rig.hub.store().db(), "duplicate").unwrap(), 2);
}

#[test]
fn partial_failed_and_in_doubt_reports_settle_the_hold_correctly() {
    for (outcome, exited, want_phase, want_bal) in [
        (
            DispenseOutcome::Partial,
            10_000,
            Phase::Partial,
            (90_000, 0),
        ),
        (DispenseOutcome::Failed, 0, Phase::Failed, (100_000, 0)),
        (
            DispenseOutcome::InDoubt,
            10_000,
            Phase::InDoubt,
            (70_000, 30_000),
        ),
    ] {
        let (mut rig, mut phone, mut atm) = setup(4);
        let code = rig.register(&mut phone, "hanako", 30_000);
        let req = rig.present(&mut atm, &code.token, "phone-1");
        let order = rig.confirm_order(&mut phone, &req);
        let h = rig.report(&mut atm, &order, outcome, exited);
        assert_eq!(h.result, Ok(Disposition::Applied));
        assert_eq!(phase(&rig, &code.tx_id), want_phase, "{outcome:?}");
        assert_eq!(balances(&rig, "hanako"), want_bal, "{outcome:?}");
        assert_books(&rig);
        if want_phase == Phase::InDoubt {
            let flagged = admin::list_withdrawals(
                rig.hub.store(),
                &admin::TxFilter {
                    flagged: true,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(flagged.len(), 1);
            // The operator counts 10,000 yen and settles.
            let now = rig.now();
            let p = admin::resolve_withdrawal(
                rig.hub.store_mut(),
                &code.tx_id,
                &resolution(10_000),
                GRACE,
                now,
            )
            .unwrap();
            assert_eq!(p, Phase::Partial);
            assert_eq!(balances(&rig, "hanako"), (90_000, 0));
            assert!(admin::unsettled(rig.hub.store()).unwrap().is_empty());
            assert_books(&rig);
        }
    }
}

#[test]
fn a_self_contradicting_report_is_in_doubt() {
    let (mut rig, mut phone, mut atm) = setup(5);
    let code = rig.register(&mut phone, "hanako", 30_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    let mut msg = report_message(&order, DispenseOutcome::Dispensed, 30_000);
    if let AtmUp::DispenseReport(r) = &mut msg {
        r.notes[0].exited -= 1; // the counts say 20,000 left the machine
    }
    let h = rig.atm_send(&mut atm, msg);
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert_eq!(phase(&rig, &code.tx_id), Phase::InDoubt);
    assert_eq!(balances(&rig, "hanako"), (70_000, 30_000));
}

#[test]
fn a_code_is_used_once_and_expires() {
    let (mut rig, mut phone, mut atm) = setup(6);
    let mut atm2 = rig.atm("atm-2");
    let code = rig.register(&mut phone, "hanako", 10_000);
    rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.atm_send(
        &mut atm2,
        AtmUp::CodePresented(CodePresented {
            token: code.token.clone(),
        }),
    );
    assert_eq!(refused(&h), RejectReason::CodeAlreadyUsed);
    assert_eq!(
        rejected_reason(&rig, &h, "atm-2", true),
        RejectReason::CodeAlreadyUsed
    );
    // The winner keeps the transaction.
    let w = crate::store::rows::withdrawal(rig.hub.store().db(), &code.tx_id)
        .unwrap()
        .unwrap();
    assert_eq!(w.atm_id.as_deref(), Some("atm-1"));

    let late = rig.register(&mut phone, "hanako", 10_000);
    rig.clock.advance(Duration::from_secs(600));
    let h = rig.atm_send(
        &mut atm2,
        AtmUp::CodePresented(CodePresented { token: late.token }),
    );
    assert_eq!(refused(&h), RejectReason::CodeExpired);
    // A forged code (signed by another hub key) is invalid.
    let forged = qrcash_protocol::CodeToken::issue(
        &qrcash_protocol::PrivateKey::generate(),
        qrcash_protocol::TxId([9; 16]),
        rig.now() + 100,
    );
    let h = rig.atm_send(
        &mut atm2,
        AtmUp::CodePresented(CodePresented { token: forged }),
    );
    assert_eq!(refused(&h), RejectReason::CodeInvalid);
}

#[test]
fn registration_checks_amount_limits_funds_and_session() {
    let (mut rig, mut phone, _) = setup(7);
    let reg = |yen: u64, cur: Currency, account: &str| {
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: account.into(),
            amount: Amount::new(yen, cur),
        })
    };
    for (msg, want) in [
        (reg(0, Currency::JPY, "hanako"), RejectReason::InvalidAmount),
        (
            reg(1_500, Currency::JPY, "hanako"),
            RejectReason::InvalidAmount,
        ),
        (
            reg(1_000, Currency::EUR, "hanako"),
            RejectReason::InvalidAmount,
        ),
        (
            reg(100_000 + 10_000, Currency::JPY, "hanako"),
            RejectReason::InsufficientFunds,
        ),
        (
            reg(210_000, Currency::JPY, "hanako"),
            RejectReason::LimitExceeded {
                limit: LimitKind::PerTransaction,
                max: jpy(200_000),
            },
        ),
        (
            reg(1_000, Currency::JPY, "nobody"),
            RejectReason::UnknownAccount,
        ),
    ] {
        let h = rig.phone(&mut phone, msg);
        assert_eq!(refused(&h), want);
        assert_eq!(rejected_reason(&rig, &h, "phone-1", false), want);
    }
    // Daily limit: 500,000 a day.
    rig.account("rich", 2_000_000);
    let mut p2 = TestDevice::new("phone-rich");
    rig.login(&mut p2, "rich");
    for _ in 0..2 {
        rig.register(&mut p2, "rich", 200_000);
    }
    let h = rig.phone(&mut p2, reg(200_000, Currency::JPY, "rich"));
    assert!(matches!(
        refused(&h),
        RejectReason::LimitExceeded {
            limit: LimitKind::Daily,
            ..
        }
    ));
    // Another account's name from a device logged in elsewhere.
    let h = rig.phone(&mut p2, reg(1_000, Currency::JPY, "hanako"));
    assert_eq!(refused(&h), RejectReason::NotLoggedIn);
    // After the session expires, log in again.
    rig.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let h = rig.phone(&mut phone, reg(1_000, Currency::JPY, "hanako"));
    assert_eq!(refused(&h), RejectReason::NotLoggedIn);
    assert_books(&rig);
}

#[test]
fn dynamic_linking_rejects_any_changed_field() {
    let (mut rig, mut phone, mut atm) = setup(8);
    let code = rig.register(&mut phone, "hanako", 30_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    for (field, edit) in [("atm_id", 0), ("amount", 1), ("challenge", 2)] {
        let mut msg = confirm_message(&phone, &req, Some(PIN), Some(near_atm()));
        if let PhoneUp::ConfirmWithdrawal(c) = &mut msg {
            match edit {
                0 => c.atm_id = "atm-9".into(),
                1 => c.amount = jpy(3_000),
                _ => c.challenge = "AAAA".into(),
            }
        }
        let h = rig.phone(&mut phone, msg);
        assert_eq!(
            refused(&h),
            RejectReason::TransactionMismatch {
                field: field.into()
            }
        );
    }
    // Nothing was held, the transaction waits for a correct confirmation.
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
    let h = rig.confirm(&mut phone, &req);
    assert_eq!(h.result, Ok(Disposition::Applied));
}

#[test]
fn location_is_required_and_must_be_near_and_accurate() {
    let (mut rig, mut phone, mut atm) = setup(9);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let msg = confirm_message(&phone, &req, Some(PIN), None);
    let h = rig.phone(&mut phone, msg);
    assert_eq!(refused(&h), RejectReason::LocationRequired);
    let vague = qrcash_protocol::Position::new(SHIBUYA.0, SHIBUYA.1, 500.0);
    let msg = confirm_message(&phone, &req, Some(PIN), Some(vague));
    let h = rig.phone(&mut phone, msg);
    assert!(
        matches!(
            refused(&h),
            RejectReason::LocationInaccurate {
                accuracy_m: 500,
                ..
            }
        ),
        "{:?}",
        refused(&h)
    );
    // About 1.1 km north, accurate to 10 m.
    let far = qrcash_protocol::Position::new(SHIBUYA.0 + 0.01, SHIBUYA.1, 10.0);
    let msg = confirm_message(&phone, &req, Some(PIN), Some(far));
    let h = rig.phone(&mut phone, msg);
    match refused(&h) {
        RejectReason::TooFarFromAtm {
            distance_m,
            allowed_m,
        } => {
            assert!((1_000..1_200).contains(&distance_m), "{distance_m}");
            assert_eq!(allowed_m, 200);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(phase(&rig, &code.tx_id), Phase::Presented);
}

#[test]
fn wrong_pins_lock_the_pin_and_end_the_session() {
    let (mut rig, mut phone, mut atm) = setup(10);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let msg = confirm_message(&phone, &req, None, Some(near_atm()));
    let h = rig.phone(&mut phone, msg);
    assert_eq!(refused(&h), RejectReason::IdentityRequired);
    let msg = confirm_message(&phone, &req, Some("9999"), Some(near_atm()));
    let h = rig.phone(&mut phone, msg);
    assert_eq!(refused(&h), RejectReason::PinWrong { attempts_left: 2 });
    let msg = confirm_message(&phone, &req, Some("9998"), Some(near_atm()));
    let h = rig.phone(&mut phone, msg);
    assert_eq!(refused(&h), RejectReason::PinWrong { attempts_left: 1 });
    let msg = confirm_message(&phone, &req, Some("9997"), Some(near_atm()));
    let h = rig.phone(&mut phone, msg);
    let until = rig.now() + 1800;
    assert_eq!(refused(&h), RejectReason::PinLocked { until });
    // The ATM is told to stop, the phone gets the refusal.
    let downs = rig.downs(&h.outgoing, "atm-1");
    assert!(matches!(
        &downs[0].msg,
        AtmDown::Abort(a) if a.reason == AbortReason::AuthenticationFailed
    ));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Declined);
    // Even the right PIN is refused while locked.
    let code2 = rig.register(&mut phone, "hanako", 10_000);
    let req2 = rig.present(&mut atm, &code2.token, "phone-1");
    let h = rig.confirm(&mut phone, &req2);
    assert_eq!(refused(&h), RejectReason::PinLocked { until });
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
}

#[test]
fn a_late_confirmation_is_refused_and_ends_the_session() {
    let (mut rig, mut phone, mut atm) = setup(11);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    rig.clock.advance(Duration::from_secs(121));
    let h = rig.confirm(&mut phone, &req);
    assert_eq!(refused(&h), RejectReason::ConfirmationTimeout);
    let downs = rig.downs(&h.outgoing, "atm-1");
    assert!(matches!(&downs[0].msg, AtmDown::Abort(a) if a.reason == AbortReason::Timeout));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Expired);
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
}

#[test]
fn the_sweeper_expires_codes_and_sessions() {
    let (mut rig, mut phone, mut atm) = setup(12);
    let unused = rig.register(&mut phone, "hanako", 10_000);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let _req = rig.present(&mut atm, &code.token, "phone-1");
    rig.clock.advance(Duration::from_secs(121));
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.sessions_expired, 1);
    assert_eq!(report.codes_expired, 0);
    let downs = rig.downs(&out, "atm-1");
    assert!(
        matches!(&downs[0].msg, AtmDown::Abort(a) if a.reason == AbortReason::Timeout && a.tx_id == code.tx_id)
    );
    rig.clock.advance(Duration::from_secs(600));
    let (_, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.codes_expired, 1);
    assert_eq!(phase(&rig, &unused.tx_id), Phase::Expired);
    assert_eq!(phase(&rig, &code.tx_id), Phase::Expired);
    let (_, report) = rig.hub.sweep().unwrap();
    assert!(report.is_empty(), "{report:?}");
}

#[test]
fn an_order_without_a_report_ends_in_doubt_with_the_hold_kept() {
    let (mut rig, mut phone, mut atm) = setup(13);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    rig.clock.advance(Duration::from_secs(120 + 3600 + 1));
    let (_, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.orders_overdue, 1);
    assert_eq!(phase(&rig, &code.tx_id), Phase::InDoubt);
    assert_eq!(balances(&rig, "hanako"), (90_000, 10_000));
    // The agent's outbox delivers the report days later: it settles the transaction.
    rig.clock.advance(Duration::from_secs(3 * 24 * 3600));
    atm.ttl = Duration::from_secs(7 * 24 * 3600);
    let h = rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 10_000);
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Dispensed);
    assert_eq!(balances(&rig, "hanako"), (90_000, 0));
    assert!(admin::unsettled(rig.hub.store()).unwrap().is_empty());
    assert_books(&rig);
}

#[test]
fn refusals_and_cancellations_release_or_resend() {
    let (mut rig, mut phone, mut atm) = setup(14);
    // Order refused → released.
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    let h = rig.atm_send(
        &mut atm,
        AtmUp::OrderRefused(OrderRefused {
            order_id: order.order_id,
            tx_id: order.tx_id,
            reason: "out of service".into(),
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Failed);
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));

    // Session cancelled while presented → cancelled.
    let code = rig.register(&mut phone, "hanako", 10_000);
    rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.atm_send(
        &mut atm,
        AtmUp::SessionCancelled(SessionCancelled {
            tx_id: code.tx_id,
            reason: qrcash_protocol::messages::CancelReason::Customer,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Cancelled);

    // Session cancelled after the order left → the order is sent again, the hold stays.
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.confirm(&mut phone, &req);
    let sent = h.outgoing[0].clone();
    let h = rig.atm_send(
        &mut atm,
        AtmUp::SessionCancelled(SessionCancelled {
            tx_id: code.tx_id,
            reason: qrcash_protocol::messages::CancelReason::Timeout,
        }),
    );
    assert_repeated(&rig, &[sent], &h.outgoing[..1]);
    assert_eq!(phase(&rig, &code.tx_id), Phase::Ordered);
    assert_eq!(balances(&rig, "hanako"), (90_000, 10_000));
    assert_books(&rig);
}

#[test]
fn decline_and_not_me_abort_the_atm_and_freeze_the_account() {
    let (mut rig, mut phone, mut atm) = setup(15);
    let code = rig.register(&mut phone, "hanako", 10_000);
    rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.phone(
        &mut phone,
        PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
            tx_id: code.tx_id,
            not_me: false,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert!(
        matches!(&rig.downs(&h.outgoing, "atm-1")[0].msg, AtmDown::Abort(a) if a.reason == AbortReason::Declined)
    );
    assert_eq!(phase(&rig, &code.tx_id), Phase::Declined);

    let code = rig.register(&mut phone, "hanako", 10_000);
    rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.phone(
        &mut phone,
        PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
            tx_id: code.tx_id,
            not_me: true,
        }),
    );
    assert!(
        matches!(&rig.downs(&h.outgoing, "atm-1")[0].msg, AtmDown::Abort(a) if a.reason == AbortReason::NotMe)
    );
    // Money out is frozen, balance queries and top-ups are not.
    let h = rig.phone(
        &mut phone,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(1_000),
        }),
    );
    assert_eq!(refused(&h), RejectReason::AccountFrozen);
    let h = rig.phone(
        &mut phone,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 5,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    // A declined code cannot be presented any more.
    let h = rig.atm_send(
        &mut atm,
        AtmUp::CodePresented(CodePresented { token: code.token }),
    );
    assert_eq!(refused(&h), RejectReason::CodeAlreadyUsed);
    let now = rig.now();
    admin::unfreeze_account(rig.hub.store_mut(), "hanako", now).unwrap();
    rig.register(&mut phone, "hanako", 1_000);
}

#[test]
fn unauthenticated_garbage_gets_only_an_audit_entry() {
    let (mut rig, mut phone, mut atm) = setup(16);
    let seq_before = admin::hub_seq(rig.hub.store()).unwrap();
    let rejected_before = audit::count(rig.hub.store().db(), "rejected").unwrap();
    let hub = rig.hub_id();
    let good = atm.message(&hub, rig.now(), AtmUp::Heartbeat(heartbeat()));
    let stranger = TestDevice::new("atm-x");
    let mut impostor = TestDevice::new("atm-1"); // claims atm-1's id with another key
    let cases: Vec<(String, Vec<u8>, RejectReason)> = vec![
        (
            atm.atm_up(),
            b"{\"not\":\"a jws\"}".to_vec(),
            RejectReason::Malformed,
        ),
        (atm.atm_up(), vec![b'a'; 20_000], RejectReason::TooLarge),
        (
            atm.atm_up(),
            vec![0xff, 0xfe, 0x00],
            RejectReason::Malformed,
        ),
        (
            topics::atm_up("atm-x"),
            stranger
                .clone()
                .message(&hub, T0, AtmUp::Heartbeat(heartbeat())),
            RejectReason::UnknownSender,
        ),
        (
            atm.atm_up(),
            impostor.message(&hub, T0, AtmUp::Heartbeat(heartbeat())),
            RejectReason::BadSignature,
        ),
        (
            "qrcash/v1/bank/atm-1/up".into(),
            good.clone(),
            RejectReason::WrongAddress,
        ),
        (
            topics::atm_down("atm-1"),
            good.clone(),
            RejectReason::WrongAddress,
        ),
        (
            topics::phone_up("nobody"),
            good.clone(),
            RejectReason::Malformed,
        ),
    ];
    for (topic, payload, want) in cases {
        let h = rig.hub.handle(&topic, &payload);
        assert!(h.outgoing.is_empty(), "{topic}: answered garbage");
        assert_eq!(refused(&h), want, "{topic}");
    }
    // A tampered signature (flip one payload character).
    let mut tampered = good.clone();
    let dot = tampered.iter().position(|b| *b == b'.').unwrap();
    tampered[dot + 5] = if tampered[dot + 5] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let h = rig.hub.handle(&atm.atm_up(), &tampered);
    assert!(h.outgoing.is_empty());
    assert!(matches!(
        refused(&h),
        RejectReason::BadSignature | RejectReason::Malformed
    ));
    // "alg": "none" and unsigned JWS.
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"qrcash.v1+jws","kid":"x"}"#),
        b64(b"{}")
    );
    let h = rig.hub.handle(&atm.atm_up(), unsigned.as_bytes());
    assert!(h.outgoing.is_empty());
    assert_eq!(
        admin::hub_seq(rig.hub.store()).unwrap(),
        seq_before,
        "nothing signed"
    );
    assert_eq!(
        audit::count(rig.hub.store().db(), "rejected").unwrap(),
        rejected_before + 10
    );
    // A phone that never logged in cannot do anything but log in.
    let mut newcomer = TestDevice::new("phone-new");
    let h = rig.phone(
        &mut newcomer,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 1,
        }),
    );
    assert_eq!(refused(&h), RejectReason::UnknownSender);
    assert!(h.outgoing.is_empty());
    let _ = &mut phone;
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn heartbeat() -> qrcash_protocol::messages::Heartbeat {
    qrcash_protocol::messages::Heartbeat {
        state: qrcash_protocol::messages::AtmState::Idle,
        cassettes: vec![],
        outbox: 0,
        software: "test".into(),
    }
}

#[test]
fn authenticated_but_wrong_messages_are_rejected_to_the_sender() {
    let (mut rig, mut phone, mut atm) = setup(17);
    let hub = rig.hub_id();
    // Wrong audience.
    let bytes = atm.message("other-hub", rig.now(), AtmUp::Heartbeat(heartbeat()));
    let h = rig.hub.handle(&atm.atm_up(), &bytes);
    assert_eq!(refused(&h), RejectReason::WrongAddress);
    assert_eq!(
        rejected_reason(&rig, &h, "atm-1", true),
        RejectReason::WrongAddress
    );
    // Expired.
    let mut c = atm.claims(&hub, rig.now() - 1000, AtmUp::Heartbeat(heartbeat()));
    c.exp = rig.now() - 100;
    let h = rig.hub.handle(&atm.atm_up(), &atm.seal(&c));
    assert_eq!(refused(&h), RejectReason::Replayed);
    // Future-dated.
    let c = atm.claims(&hub, rig.now() + 3600, AtmUp::Heartbeat(heartbeat()));
    let h = rig.hub.handle(&atm.atm_up(), &atm.seal(&c));
    assert_eq!(refused(&h), RejectReason::Replayed);
    // Replayed sequence number under a new jti.
    let c1 = atm.claims(&hub, rig.now(), AtmUp::Heartbeat(heartbeat()));
    assert_eq!(
        rig.hub.handle(&atm.atm_up(), &atm.seal(&c1)).result,
        Ok(Disposition::Applied)
    );
    let mut c2 = c1.clone();
    c2.jti = "another-id".into();
    let h = rig.hub.handle(&atm.atm_up(), &atm.seal(&c2));
    assert_eq!(refused(&h), RejectReason::Replayed);
    assert_eq!(
        rejected_reason(&rig, &h, "atm-1", true),
        RejectReason::Replayed
    );
    // A phone message about another account's transaction.
    rig.account("taro", 50_000);
    let mut taro = TestDevice::new("phone-taro");
    rig.login(&mut taro, "taro");
    let code = rig.register(&mut phone, "hanako", 10_000);
    let h = rig.phone(
        &mut taro,
        PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
            tx_id: code.tx_id,
            not_me: true,
        }),
    );
    assert_eq!(refused(&h), RejectReason::UnknownTransaction);
    // The message of an ATM about a transaction bound to another ATM.
    let mut atm2 = rig.atm("atm-2");
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let h = rig.atm_send(
        &mut atm2,
        AtmUp::SessionCancelled(SessionCancelled {
            tx_id: req.tx_id,
            reason: qrcash_protocol::messages::CancelReason::Customer,
        }),
    );
    assert_eq!(refused(&h), RejectReason::AtmMismatch);
    assert_eq!(phase(&rig, &code.tx_id), Phase::Presented);
}

#[test]
fn login_checks_password_and_binds_devices_to_one_account() {
    let mut rig = Rig::in_memory(18);
    rig.account("hanako", 1_000);
    rig.account("taro", 1_000);
    let mut phone = TestDevice::new("phone-1");
    let mut wrong = login_message(&phone, "hanako", None);
    if let PhoneUp::Login(l) = &mut wrong {
        l.password = seal_for(&phone, qrcash_protocol::SecretField::Password, "nope-nope");
    }
    let h = rig.phone(&mut phone, wrong);
    assert_eq!(refused(&h), RejectReason::BadCredentials);
    assert_eq!(
        rejected_reason(&rig, &h, "phone-1", false),
        RejectReason::BadCredentials
    );
    let h = rig.login(&mut phone, "hanako");
    match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => {
            assert!(!r.new_device);
            assert_eq!(r.restriction, None);
        }
        other => panic!("{other:?}"),
    }
    // The same device id cannot log in to another account.
    let h = rig.login(&mut phone, "taro");
    assert_eq!(refused(&h), RejectReason::BadCredentials);
    // A Login whose device id is not the sender's.
    let other = TestDevice::new("phone-2");
    let msg = login_message(&other, "hanako", None);
    let h = rig.phone(&mut phone, msg);
    assert_eq!(refused(&h), RejectReason::WrongAddress);
    // A Login signed by a key other than the one inside it.
    let mut thief = TestDevice::new("phone-3");
    let msg = login_message(&TestDevice::new("phone-3"), "hanako", None);
    let h = rig.phone(&mut thief, msg);
    assert_eq!(refused(&h), RejectReason::BadSignature);
    assert!(h.outgoing.is_empty());
    // A revoked device cannot log in again.
    let now = rig.now();
    admin::revoke_device(rig.hub.store_mut(), "phone-1", "lost", now).unwrap();
    let h = rig.login(&mut phone, "hanako");
    assert_eq!(refused(&h), RejectReason::DeviceRevoked);
}

#[test]
fn a_new_device_far_away_is_restricted_and_the_owner_can_say_not_me() {
    let (mut rig, mut phone, _) = setup(19);
    rig.account("taro", 10_000);
    // A second device logs in from Osaka with no history: restricted, alert to phone-1.
    let mut thief = TestDevice::new("phone-osaka");
    let osaka = qrcash_protocol::Position::new(34.7025, 135.4959, 20.0);
    let msg = login_message(&thief, "hanako", Some(osaka));
    let h = rig.phone(&mut thief, msg);
    assert_eq!(h.result, Ok(Disposition::Applied));
    let result = match rig.pushes(&h.outgoing, "phone-osaka").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => r,
        other => panic!("{other:?}"),
    };
    assert!(result.new_device);
    let restriction = result.restriction.expect("restricted");
    let until = restriction.until.expect("timed");
    assert!(until > rig.now());
    let alert = match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::NewDeviceAlert(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(alert.device_id, "phone-osaka");
    assert_eq!(alert.restricted_until, Some(until));
    // Money out is refused, top-up is free.
    let h = rig.phone(
        &mut thief,
        PhoneUp::Transfer(qrcash_protocol::messages::Transfer {
            idempotency_key: "k1".into(),
            to_account: "taro".into(),
            amount: jpy(1_000),
            memo: None,
        }),
    );
    assert_eq!(refused(&h), RejectReason::Restricted { until });
    let h = rig.phone(
        &mut thief,
        PhoneUp::TopUp(qrcash_protocol::messages::TopUp {
            idempotency_key: "t1".into(),
            amount: jpy(1_000),
            from: funding("hanako"),
        }),
    );
    // A top-up draws on the owner's bank: restricted too.
    assert_eq!(refused(&h), RejectReason::Restricted { until });
    assert_eq!(
        admin::list_restrictions(rig.hub.store(), rig.now())
            .unwrap()
            .len(),
        1
    );
    // The owner says "not me": the new device is revoked, the account frozen.
    let h = rig.phone(
        &mut phone,
        PhoneUp::AnswerNewDeviceAlert(qrcash_protocol::messages::AnswerNewDeviceAlert {
            alert_id: alert.alert_id.clone(),
            not_me: true,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    let h = rig.phone(
        &mut thief,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 1,
        }),
    );
    assert_eq!(refused(&h), RejectReason::DeviceRevoked);
    let h = rig.phone(
        &mut phone,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(1_000),
        }),
    );
    assert_eq!(refused(&h), RejectReason::AccountFrozen);
    let h = rig.phone(
        &mut phone,
        PhoneUp::AnswerNewDeviceAlert(qrcash_protocol::messages::AnswerNewDeviceAlert {
            alert_id: "alert-nope".into(),
            not_me: true,
        }),
    );
    assert_eq!(refused(&h), RejectReason::UnknownAlert);
    // A long alert id (kilobytes, within the size limit) is not echoed back in the answer.
    let h = rig.phone(
        &mut phone,
        PhoneUp::AnswerNewDeviceAlert(qrcash_protocol::messages::AnswerNewDeviceAlert {
            alert_id: "x".repeat(4_000),
            not_me: false,
        }),
    );
    assert_eq!(refused(&h), RejectReason::UnknownAlert);
    let message = match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::Rejected(r)) => r.message,
        other => panic!("{other:?}"),
    };
    assert!(message.len() < 200, "{} bytes echoed", message.len());
}

#[test]
fn a_new_device_claiming_the_old_ones_place_is_restricted_until_approved_or_due() {
    let (mut rig, mut phone, _) = setup(20);
    let mut second = TestDevice::new("phone-2");
    let h = rig.login(&mut second, "hanako"); // claims phone-1's position
    let until = match rig.pushes(&h.outgoing, "phone-2").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => {
            assert!(r.new_device);
            r.restriction
                .and_then(|r| r.until)
                .expect("a claim alone never frees")
        }
        other => panic!("{other:?}"),
    };
    let alert = match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::NewDeviceAlert(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(alert.position, None, "the alert shows no claimed position");
    let h = rig.phone(
        &mut second,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(1_000),
        }),
    );
    assert_eq!(refused(&h), RejectReason::Restricted { until });
    // The owner approves from the established phone: lifted at once.
    let h = rig.phone(
        &mut phone,
        PhoneUp::AnswerNewDeviceAlert(qrcash_protocol::messages::AnswerNewDeviceAlert {
            alert_id: alert.alert_id,
            not_me: false,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    rig.register(&mut second, "hanako", 1_000);
    // A third device without a position is restricted; the sweeper lifts it when due.
    let mut third = TestDevice::new("phone-3");
    let msg = login_message(&third, "hanako", None);
    let h = rig.phone(&mut third, msg);
    let until = match rig.pushes(&h.outgoing, "phone-3").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => r.restriction.and_then(|r| r.until).expect("restricted"),
        other => panic!("{other:?}"),
    };
    rig.clock.set(until);
    let (_, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.restrictions_lifted, 1);
    // Log in again (the session may be old by now) and move money.
    let msg = login_message(&third, "hanako", None);
    rig.phone(&mut third, msg);
    rig.register(&mut third, "hanako", 1_000);
}

#[test]
fn transfers_payments_payouts_and_top_ups_are_balanced_and_idempotent() {
    let (mut rig, mut phone, _) = setup(21);
    rig.account("taro", 0);
    let mut taro = TestDevice::new("phone-taro");
    rig.login(&mut taro, "taro");
    rig.merchant("cafe");
    let now = rig.now();
    admin::add_bank_account(
        rig.hub.store_mut(),
        &admin::NewBankAccount {
            id: "bank-hanako".into(),
            account: "hanako".into(),
            bank: "Mizuho".into(),
            number: "1234567".into(),
            holder: "HANAKO".into(),
        },
        now,
    )
    .unwrap();
    let transfer = PhoneUp::Transfer(qrcash_protocol::messages::Transfer {
        idempotency_key: "tr-1".into(),
        to_account: "taro".into(),
        amount: jpy(5_000),
        memo: Some("dinner".into()),
    });
    let h = rig.phone(&mut phone, transfer.clone());
    assert_eq!(h.result, Ok(Disposition::Applied));
    let taro_push = rig.pushes(&h.outgoing, "phone-taro");
    assert!(
        matches!(&taro_push[0].msg, PhonePush::Receipt(r) if r.kind == qrcash_protocol::messages::ReceiptKind::TransferReceived && r.balance == jpy(5_000))
    );
    // The same key and request again: the same receipt, no second posting.
    let first = rig.pushes(&h.outgoing, "phone-1").pop().unwrap().msg;
    let h = rig.phone(&mut phone, transfer);
    assert_eq!(rig.pushes(&h.outgoing, "phone-1").pop().unwrap().msg, first);
    assert_eq!(balances(&rig, "taro"), (5_000, 0));
    // The same key for another request: conflict.
    let h = rig.phone(
        &mut phone,
        PhoneUp::Transfer(qrcash_protocol::messages::Transfer {
            idempotency_key: "tr-1".into(),
            to_account: "taro".into(),
            amount: jpy(6_000),
            memo: None,
        }),
    );
    assert_eq!(refused(&h), RejectReason::IdempotencyConflict);
    let h = rig.phone(
        &mut phone,
        PhoneUp::Payment(qrcash_protocol::messages::Payment {
            idempotency_key: "p-1".into(),
            merchant_id: "cafe".into(),
            amount: jpy(780),
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    let h = rig.phone(
        &mut phone,
        PhoneUp::Payment(qrcash_protocol::messages::Payment {
            idempotency_key: "p-2".into(),
            merchant_id: "nowhere".into(),
            amount: jpy(780),
        }),
    );
    assert_eq!(refused(&h), RejectReason::UnknownMerchant);
    let h = rig.phone(
        &mut phone,
        PhoneUp::BankWithdrawal(qrcash_protocol::messages::BankWithdrawal {
            idempotency_key: "b-1".into(),
            bank_account: "bank-hanako".into(),
            amount: jpy(20_000),
        }),
    );
    assert!(
        matches!(&rig.pushes(&h.outgoing, "phone-1")[0].msg, PhonePush::Receipt(r) if r.status == ReceiptStatus::Pending)
    );
    let h = rig.phone(
        &mut taro,
        PhoneUp::BankWithdrawal(qrcash_protocol::messages::BankWithdrawal {
            idempotency_key: "b-1".into(),
            bank_account: "bank-hanako".into(),
            amount: jpy(1_000),
        }),
    );
    assert_eq!(refused(&h), RejectReason::UnknownBankAccount);
    let h = rig.phone(
        &mut taro,
        PhoneUp::Transfer(qrcash_protocol::messages::Transfer {
            idempotency_key: "x".into(),
            to_account: "hanako".into(),
            amount: jpy(5_001),
            memo: None,
        }),
    );
    assert_eq!(refused(&h), RejectReason::InsufficientFunds);
    let h = rig.phone(
        &mut taro,
        PhoneUp::TopUp(qrcash_protocol::messages::TopUp {
            idempotency_key: "t".into(),
            amount: jpy(2_000_000),
            from: funding("taro"),
        }),
    );
    assert!(matches!(refused(&h), RejectReason::LimitExceeded { .. }));
    assert_eq!(
        balances(&rig, "hanako"),
        (100_000 - 5_000 - 780 - 20_000, 0)
    );
    let h = rig.phone(
        &mut phone,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 10,
        }),
    );
    match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::Balance(b)) => {
            assert_eq!(b.available, jpy(74_220));
            assert_eq!(b.history.len(), 4);
            assert_eq!(b.history[0].amount, jpy(20_000));
        }
        other => panic!("{other:?}"),
    }
    assert_books(&rig);
}

#[test]
fn the_hub_seq_keeps_increasing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let mut rig = Rig::new(crate::store::Store::open(&path).unwrap(), test_config(), 22);
    rig.account("hanako", 10_000);
    let mut phone = TestDevice::new("phone-1");
    rig.login(&mut phone, "hanako");
    rig.register(&mut phone, "hanako", 1_000);
    let before = admin::hub_seq(rig.hub.store()).unwrap();
    drop(rig);
    let mut rig = Rig::new(crate::store::Store::open(&path).unwrap(), test_config(), 23);
    // The phone's window survived too: its next message is accepted, an old one is not.
    let h = rig.phone(
        &mut phone,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 0,
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    let seq = rig.pushes(&h.outgoing, "phone-1")[0].seq;
    assert!(seq > before, "{seq} > {before}");
    let mut old = phone.clone();
    old.seq = 1;
    let h = rig.phone(
        &mut old,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 0,
        }),
    );
    assert_eq!(refused(&h), RejectReason::Replayed);
    assert!(matches!(h.result, Err(HandleError::Replay(_))));
}

#[test]
fn warnings_follow_the_situation() {
    let (mut rig, mut phone, mut atm) = setup(24);
    // 22:00 in Japan (13:00 UTC), a large amount, a device enrolled today besides the first.
    let day = T0 - T0 % 86_400;
    rig.clock.set(day + 13 * 3600);
    let mut second = TestDevice::new("phone-2");
    rig.login(&mut second, "hanako");
    let code = rig.register(&mut phone, "hanako", 100_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let codes: std::collections::BTreeSet<&str> =
        req.warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "account_recently_changed",
            "first_use_of_atm",
            "general",
            "large_amount",
            "late_hours"
        ]
        .into()
    );
    let order = rig.confirm_order(&mut phone, &req);
    rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 100_000);
    // Weeks later, at noon, a small amount at the same ATM: only the general warning.
    rig.clock.set(day + 30 * 86_400 + 3 * 3600);
    rig.login(&mut phone, "hanako");
    rig.phone(
        &mut phone,
        PhoneUp::TopUp(qrcash_protocol::messages::TopUp {
            idempotency_key: "t".into(),
            amount: jpy(10_000),
            from: funding("hanako"),
        }),
    );
    let code = rig.register(&mut phone, "hanako", 1_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let codes: Vec<&str> = req.warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(codes, ["general", "general"], "ja and en");
}

#[test]
fn the_note_breakdown_follows_the_cassettes_last_reported() {
    let (mut rig, mut phone, mut atm) = setup(25);
    let cassette = |denomination, notes| qrcash_protocol::messages::CassetteStatus {
        denomination,
        notes,
        state: qrcash_protocol::messages::CassetteState::Ok,
    };
    let h = rig.atm_send(
        &mut atm,
        AtmUp::Heartbeat(qrcash_protocol::messages::Heartbeat {
            state: qrcash_protocol::messages::AtmState::Idle,
            cassettes: vec![cassette(10_000, 1), cassette(5_000, 0), cassette(1_000, 5)],
            outbox: 0,
            software: "test".into(),
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    let code = rig.register(&mut phone, "hanako", 30_000);
    let h = rig.atm_send(
        &mut atm,
        AtmUp::CodePresented(CodePresented {
            token: code.token.clone(),
        }),
    );
    assert_eq!(refused(&h), RejectReason::InvalidAmount);
    // Still registered: the customer can try another ATM.
    assert_eq!(phase(&rig, &code.tx_id), Phase::Registered);
    let code = rig.register(&mut phone, "hanako", 15_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    let notes: Vec<(u64, u32)> = order
        .notes
        .iter()
        .map(|n| (n.denomination, n.count))
        .collect();
    assert_eq!(notes, [(10_000, 1), (1_000, 5)]);
}

#[test]
fn biometric_rules() {
    use qrcash_protocol::messages::{BiometricAttestation, BiometricMethod, IdentityEvidence};
    for (rule, pin, bio_age, ok) in [
        (crate::config::IdentityRule::Biometric, None, Some(5), true),
        (
            crate::config::IdentityRule::Biometric,
            Some(PIN),
            None,
            false,
        ),
        (
            crate::config::IdentityRule::Biometric,
            None,
            Some(500),
            false,
        ),
        (
            crate::config::IdentityRule::PinOrBiometric,
            None,
            Some(5),
            true,
        ),
        (
            crate::config::IdentityRule::PinOrBiometric,
            Some(PIN),
            None,
            true,
        ),
        (
            crate::config::IdentityRule::PinAndBiometric,
            Some(PIN),
            None,
            false,
        ),
        (
            crate::config::IdentityRule::PinAndBiometric,
            Some(PIN),
            Some(5),
            true,
        ),
    ] {
        let mut config = test_config();
        config.auth.identity = rule;
        let mut rig = Rig::new(crate::store::Store::open_test(), config, 26);
        rig.account("hanako", 100_000);
        let mut atm = rig.atm("atm-1");
        let mut phone = TestDevice::new("phone-1");
        rig.login(&mut phone, "hanako");
        let code = rig.register(&mut phone, "hanako", 10_000);
        let req = rig.present(&mut atm, &code.token, "phone-1");
        rig.clock.advance(Duration::from_secs(10));
        let mut msg = confirm_message(&phone, &req, pin, Some(near_atm()));
        if let PhoneUp::ConfirmWithdrawal(c) = &mut msg {
            c.identity = IdentityEvidence {
                pin: pin.map(|p| seal_for(&phone, qrcash_protocol::SecretField::Pin, p)),
                biometric: bio_age.map(|age| BiometricAttestation {
                    method: BiometricMethod::Face,
                    verified_at: rig.now() - age,
                }),
            };
        }
        let h = rig.phone(&mut phone, msg);
        assert_eq!(
            h.result.is_ok(),
            ok,
            "{rule:?} pin {pin:?} bio {bio_age:?}: {:?}",
            h.result
        );
        if !ok {
            assert_eq!(refused(&h), RejectReason::IdentityRequired);
        }
    }
}

#[test]
fn the_code_push_fits_the_downlink_limit_and_presence_is_recorded() {
    let (mut rig, mut phone, _atm) = setup(27);
    let h = rig.phone(
        &mut phone,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(10_000),
        }),
    );
    let size = h.outgoing[0].payload.len();
    assert!(size < qrcash_protocol::MAX_DOWNLINK_BYTES, "{size} bytes");
    let h = rig.hub.handle(&topics::atm_presence("atm-1"), b"offline");
    assert_eq!(h.result, Ok(Disposition::Presence));
    let atm = crate::store::rows::atm(rig.hub.store().db(), "atm-1")
        .unwrap()
        .unwrap();
    assert_eq!(atm.presence.as_deref(), Some("offline"));
    let h = rig.hub.handle(&topics::atm_presence("atm-9"), b"online");
    assert!(h.result.is_err() && h.outgoing.is_empty());
}

#[test]
fn a_warnings_file_from_the_config_replaces_the_built_in_texts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    let mut text = String::new();
    for code in crate::warnings::CODES {
        text.push_str(&format!(
            "[[warning]]\ncode = \"{code}\"\nen = \"custom {code}\"\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    let mut config = test_config();
    config.warnings.file = Some(path);
    config.warnings.languages = vec!["en".into()];
    let mut rig = Rig::new(crate::store::Store::open_test(), config, 28);
    rig.account("hanako", 100_000);
    let mut atm = rig.atm("atm-1");
    let mut phone = TestDevice::new("phone-1");
    rig.login(&mut phone, "hanako");
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    assert_eq!(req.warnings[0].text, "custom general");
    assert!(req.warnings.iter().all(|w| w.lang == "en"));
}

#[test]
fn a_password_change_brings_the_recent_change_warning_and_late_reports_are_flagged() {
    let (mut rig, mut phone, mut atm) = setup(29);
    rig.clock.advance(Duration::from_secs(30 * 86_400));
    let now = rig.now();
    admin::change_password(
        rig.hub.store_mut(),
        "hanako",
        "a new password",
        crate::identity::HashCost::TEST,
        now,
    )
    .unwrap();
    // The old password no longer works; the new one does.
    let h = rig.login(&mut phone, "hanako");
    assert_eq!(refused(&h), RejectReason::BadCredentials);
    let mut msg = login_message(&phone, "hanako", Some(near_atm()));
    if let PhoneUp::Login(l) = &mut msg {
        l.password = seal_for(
            &phone,
            qrcash_protocol::SecretField::Password,
            "a new password",
        );
    }
    assert_eq!(rig.phone(&mut phone, msg).result, Ok(Disposition::Applied));
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    assert!(
        req.warnings
            .iter()
            .any(|w| w.code == "account_recently_changed")
    );
    // A report, then a second one that tells another story: journalled, flagged.
    let order = rig.confirm_order(&mut phone, &req);
    rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 10_000);
    let h = rig.report(&mut atm, &order, DispenseOutcome::Failed, 0);
    assert_eq!(h.result, Ok(Disposition::Applied), "acknowledged");
    let (w, reports) = admin::show_withdrawal(rig.hub.store(), &code.tx_id).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports[0].applied && !reports[1].applied);
    assert!(w.needs_reconciliation && w.phase == Phase::Dispensed);
    assert_eq!(balances(&rig, "hanako"), (90_000, 0), "applied once");
    let now = rig.now();
    assert!(
        admin::resolve_withdrawal(rig.hub.store_mut(), &code.tx_id, &resolution(0), GRACE, now)
            .is_err()
    );
    admin::clear_flag(rig.hub.store_mut(), &code.tx_id, "cash counted: paid", now).unwrap();
    assert!(admin::unsettled(rig.hub.store()).unwrap().is_empty());
}

#[test]
fn a_batch_commits_each_message_atomically() {
    let (mut rig, mut phone, _atm) = setup(30);
    rig.account("taro", 0);
    let hub = rig.hub_id();
    let now = rig.now();
    let transfer = |key: &str, yen: u64| {
        PhoneUp::Transfer(qrcash_protocol::messages::Transfer {
            idempotency_key: key.into(),
            to_account: "taro".into(),
            amount: jpy(yen),
            memo: None,
        })
    };
    let batch = vec![
        super::Incoming::new(
            phone.phone_up(),
            phone.message(&hub, now, transfer("a", 60_000)),
        ),
        super::Incoming::new(phone.phone_up(), b"garbage".to_vec()),
        // Would overdraw after the first: refused, nothing of it stays.
        super::Incoming::new(
            phone.phone_up(),
            phone.message(&hub, now, transfer("b", 60_000)),
        ),
        super::Incoming::new(
            phone.phone_up(),
            phone.message(&hub, now, transfer("c", 40_000)),
        ),
    ];
    let results = rig.hub.handle_batch(&batch);
    let reasons: Vec<Option<RejectReason>> = results
        .iter()
        .map(|h| h.result.as_ref().err().map(HandleError::reason))
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            Some(RejectReason::Malformed),
            Some(RejectReason::InsufficientFunds),
            None
        ]
    );
    assert!(results[1].outgoing.is_empty());
    assert_eq!(balances(&rig, "hanako"), (0, 0));
    assert_eq!(balances(&rig, "taro"), (100_000, 0));
    let ops: i64 = rig
        .hub
        .store()
        .db()
        .read_i64("SELECT COUNT(*) FROM operations")
        .unwrap();
    assert_eq!(ops, 2, "the refused transfer left no operation behind");
    assert_books(&rig);
}

#[test]
fn a_new_key_for_a_known_device_is_treated_as_a_new_device() {
    let (mut rig, phone, _) = setup(31);
    // Someone with the password logs in as "phone-1" with a key of their own, from Osaka.
    let mut impostor = TestDevice::new("phone-1");
    impostor.seq = 0;
    let osaka = qrcash_protocol::Position::new(34.7025, 135.4959, 20.0);
    let msg = login_message(&impostor, "hanako", Some(osaka));
    let h = rig.phone(&mut impostor, msg);
    match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => {
            assert!(r.new_device);
            assert!(
                r.restriction.is_some(),
                "re-keying must not skip the restriction"
            );
        }
        other => panic!("{other:?}"),
    }
    let h = rig.phone(
        &mut impostor,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(1_000),
        }),
    );
    assert!(matches!(refused(&h), RejectReason::Restricted { .. }));
    // The owner's old key no longer works on this device id.
    let mut owner = phone;
    let h = rig.phone(
        &mut owner,
        PhoneUp::BalanceQuery(qrcash_protocol::messages::BalanceQuery {
            account: "hanako".into(),
            history: 0,
        }),
    );
    assert_eq!(refused(&h), RejectReason::BadSignature);
    // The owner reinstalls in Shibuya minutes after the Osaka login: restricted too, until
    // support has checked and lifts it. The restricted impostor's Osaka login says nothing
    // about where the owner is, so there is no established position to compare with: a
    // new-device restriction for the longest period.
    let mut reinstall = TestDevice::new("phone-1");
    let h = rig.login(&mut reinstall, "hanako");
    match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::LoginResult(r)) => assert_eq!(
            r.restriction,
            Some(qrcash_protocol::messages::RestrictionInfo {
                reason: qrcash_protocol::messages::RestrictionReason::NewDevice,
                until: Some(rig.now() + rig.hub.config().restriction.max_period_secs),
            })
        ),
        other => panic!("{other:?}"),
    }
    let now = rig.now();
    admin::lift_restriction(rig.hub.store_mut(), "phone-1", now).unwrap();
    rig.register(&mut reinstall, "hanako", 1_000);
}

/// The in-doubt report an agent sends after a restart: counts by the source named, the
/// upper bound stated.
fn recovered_report(
    order: &qrcash_protocol::messages::DispenseOrder,
    known_yen: u64,
    max_yen: u64,
    source: qrcash_protocol::messages::CountSource,
) -> AtmUp {
    let mut msg = report_message(order, DispenseOutcome::InDoubt, known_yen);
    if let AtmUp::DispenseReport(r) = &mut msg {
        r.max_dispensed = Some(jpy(max_yen));
        r.source = Some(source);
    }
    msg
}

fn unchanged(rig: &Rig, tx: &qrcash_protocol::TxId, want: Phase, bal: (u64, u64)) {
    assert_eq!(phase(rig, tx), want);
    assert_eq!(balances(rig, "hanako"), bal);
    assert!(admin::resolution_of(rig.hub.store(), tx).unwrap().is_none());
}

#[test]
fn resolve_is_refused_while_the_order_may_still_be_executed() {
    let (mut rig, mut phone, mut atm) = setup(71);
    let code = rig.register(&mut phone, "hanako", 19_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    // 20 s after the order, the ATM silent: the order may be executing right now.
    rig.clock.advance(Duration::from_secs(20));
    let now = rig.now();
    let err =
        admin::resolve_withdrawal(rig.hub.store_mut(), &code.tx_id, &resolution(0), GRACE, now)
            .unwrap_err();
    assert!(
        matches!(err, crate::error::AdminError::WrongState(_)),
        "{err}"
    );
    unchanged(&rig, &code.tx_id, Phase::Ordered, (81_000, 19_000));
    // Past the order's expiry but within the report grace: still refused.
    rig.clock.advance(Duration::from_secs(
        rig.hub.config().withdrawal.order_ttl_s + 60,
    ));
    let now = rig.now();
    assert!(
        admin::resolve_withdrawal(rig.hub.store_mut(), &code.tx_id, &resolution(0), GRACE, now)
            .is_err()
    );
    unchanged(&rig, &code.tx_id, Phase::Ordered, (81_000, 19_000));
    // The ATM reports in doubt: now it may be settled, within the report's bounds.
    let h = rig.atm_send(
        &mut atm,
        recovered_report(
            &order,
            0,
            19_000,
            qrcash_protocol::messages::CountSource::NoRecord,
        ),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    let now = rig.now();
    let p = admin::resolve_withdrawal(rig.hub.store_mut(), &code.tx_id, &resolution(0), GRACE, now)
        .unwrap();
    assert_eq!(p, Phase::Failed);
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
    assert_books(&rig);
}

#[test]
fn resolve_without_any_report_waits_for_expiry_plus_grace() {
    let (mut rig, mut phone, mut atm) = setup(72);
    let code = rig.register(&mut phone, "hanako", 19_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    rig.confirm_order(&mut phone, &req);
    let w = &rig.hub.config().withdrawal;
    rig.clock
        .advance(Duration::from_secs(w.order_ttl_s + w.report_grace_s + 1));
    let now = rig.now();
    // No report at all: anything from nothing to everything, in the order's notes.
    let p = admin::resolve_withdrawal(
        rig.hub.store_mut(),
        &code.tx_id,
        &resolution(19_000),
        GRACE,
        now,
    )
    .unwrap();
    assert_eq!(p, Phase::Dispensed);
    assert_eq!(balances(&rig, "hanako"), (81_000, 0));
}

#[test]
fn resolve_must_fit_the_evidence_and_the_orders_notes_and_name_who_and_why() {
    let (mut rig, mut phone, mut atm) = setup(73);
    let code = rig.register(&mut phone, "hanako", 19_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    // The driver's record: 12,000 yen known out, the rest was in flight.
    rig.atm_send(
        &mut atm,
        recovered_report(
            &order,
            12_000,
            19_000,
            qrcash_protocol::messages::CountSource::DriverRecord,
        ),
    );
    let now = rig.now();
    let try_resolve = |rig: &mut Rig, r: admin::Resolution| {
        admin::resolve_withdrawal(rig.hub.store_mut(), &code.tx_id, &r, GRACE, now)
    };
    // 500 yen cannot be paid in this order's notes; 11,000 is below what is known to have
    // left; 20,000 above what can have left; who and why are required.
    for v in [500, 11_000, 20_000, 12_500] {
        let err = try_resolve(&mut rig, resolution(v)).unwrap_err();
        assert!(
            matches!(err, crate::error::AdminError::Invalid(_)),
            "{v}: {err}"
        );
        unchanged(&rig, &code.tx_id, Phase::InDoubt, (81_000, 19_000));
    }
    let anonymous = admin::Resolution {
        operator: " ".into(),
        ..resolution(12_000)
    };
    assert!(try_resolve(&mut rig, anonymous).is_err());
    unchanged(&rig, &code.tx_id, Phase::InDoubt, (81_000, 19_000));

    // Within the bounds and payable: settled, recorded with its evidence, receipt queued.
    assert_eq!(
        try_resolve(&mut rig, resolution(12_000)).unwrap(),
        Phase::Partial
    );
    assert_eq!(balances(&rig, "hanako"), (88_000, 0));
    let r = admin::resolution_of(rig.hub.store(), &code.tx_id)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.operator.as_str(), r.dispensed, r.low, r.high),
        ("ops-1", 12_000, 12_000, 19_000)
    );
    assert!(r.evidence.contains("driver_record"), "{}", r.evidence);
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.pushes_sent, 1);
    let receipt = rig.pushes(&out, "phone-1").pop().map(|c| c.msg);
    match receipt {
        Some(PhonePush::Receipt(r)) => {
            assert_eq!(r.settled, jpy(12_000));
            assert_eq!(r.status, qrcash_protocol::messages::ReceiptStatus::Partial);
        }
        other => panic!("expected a receipt, got {other:?}"),
    }
    // Sent once.
    assert_eq!(rig.hub.sweep().unwrap().1.pushes_sent, 0);
    // A settled withdrawal is not resolved twice.
    assert!(try_resolve(&mut rig, resolution(12_000)).is_err());
    let audit = audit::tail(rig.hub.store().db(), 50).unwrap();
    assert!(audit.iter().any(|a| {
        a.entry.msg_type.as_deref() == Some("tx resolve")
            && a.entry.sender.as_deref() == Some("ops-1")
            && a.entry
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("cash counted"))
    }));
    assert_books(&rig);
}

#[test]
fn a_report_contradicting_a_resolution_proposes_corrections_never_a_silent_flag() {
    let (mut rig, mut phone, mut atm) = setup(74);
    let code = rig.register(&mut phone, "hanako", 19_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    rig.atm_send(
        &mut atm,
        recovered_report(
            &order,
            0,
            19_000,
            qrcash_protocol::messages::CountSource::NoRecord,
        ),
    );
    let now = rig.now();
    admin::resolve_withdrawal(rig.hub.store_mut(), &code.tx_id, &resolution(0), GRACE, now)
        .unwrap();
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
    // The ATM's definitive report arrives afterwards: all 19,000 yen left the machine.
    let h = rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 19_000);
    assert_eq!(h.result, Ok(Disposition::Applied), "acknowledged");
    let (w, _) = admin::show_withdrawal(rig.hub.store(), &code.tx_id).unwrap();
    assert!(w.needs_reconciliation);
    assert_eq!(
        (w.phase, w.settled),
        (Phase::Failed, 0),
        "books unchanged until approved"
    );
    let waiting = admin::corrections(rig.hub.store(), None, true).unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (waiting[0].from_settled, waiting[0].to_settled),
        (0, 19_000)
    );
    // The ledger check no longer says OK while the books are known to be wrong.
    let check = admin::ledger_check(rig.hub.store()).unwrap();
    assert!(check.problems.is_empty() && !check.is_ok(), "{check}");
    // The same report again proposes nothing new.
    rig.report(&mut atm, &order, DispenseOutcome::Dispensed, 19_000);
    assert_eq!(
        admin::corrections(rig.hub.store(), None, true)
            .unwrap()
            .len(),
        1
    );

    let now = rig.now();
    let id = waiting[0].id;
    assert!(admin::decide_correction(rig.hub.store_mut(), id, true, "", "x", now).is_err());
    let p = admin::decide_correction(
        rig.hub.store_mut(),
        id,
        true,
        "ops-2",
        "journal checked",
        now,
    )
    .unwrap();
    assert_eq!(p, Phase::Dispensed);
    assert_eq!(balances(&rig, "hanako"), (81_000, 0));
    let (w, _) = admin::show_withdrawal(rig.hub.store(), &code.tx_id).unwrap();
    assert_eq!((w.settled, w.needs_reconciliation), (19_000, false));
    assert!(admin::ledger_check(rig.hub.store()).unwrap().is_ok());
    assert!(
        admin::decide_correction(rig.hub.store_mut(), id, true, "ops-2", "again", now).is_err()
    );
    // The customer gets the corrected receipt.
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!(
        report.pushes_sent, 2,
        "resolution receipt and corrected receipt"
    );
    assert!(matches!(
        rig.pushes(&out, "phone-1").pop().map(|c| c.msg),
        Some(PhonePush::Receipt(r)) if r.settled == jpy(19_000)
    ));
}

#[test]
fn a_panic_in_a_handler_becomes_a_typed_refusal() {
    let ok = super::guarded(|| Ok(Vec::new()));
    assert!(ok.is_ok());
    let panicked = super::guarded(|| {
        let counts: Vec<u32> = vec![u32::MAX, 1];
        // What `sum::<u32>()` over a heartbeat's counts did before it saturated.
        let total = counts
            .iter()
            .fold(0u32, |a, n| a.checked_add(*n).expect("overflow"));
        panic!("unreachable: {total}")
    });
    match panicked {
        Err(super::Fail::Refused(r)) => assert_eq!(r.reason, RejectReason::Malformed),
        Err(super::Fail::Store(e)) => panic!("expected a typed refusal, got {e}"),
        Ok(_) => panic!("expected a typed refusal, got success"),
    }
}

/// Spec problem 3: a correctly signed message that does not decode (a typo, `10000.0` for
/// an integer) is answered `malformed` with `re`, and changes nothing; one whose signature
/// does not hold still gets silence.
#[test]
fn a_signed_but_malformed_message_is_answered_malformed() {
    let (mut rig, mut phone, _) = setup(77);
    let hub = rig.hub_id();
    let body = serde_json::json!({
        "type": "RegisterWithdrawal",
        "account": "hanako",
        "amount": {"minor": 10000.0, "currency": "JPY"}
    });
    let claims = phone.claims(&hub, rig.now(), body.clone());
    let bytes = phone.seal(&claims);
    let h = rig.hub.handle(&phone.phone_up(), &bytes);
    assert!(
        matches!(&h.result, Err(e) if e.reason() == RejectReason::Malformed),
        "{:?}",
        h.result
    );
    let answers = rig.pushes(&h.outgoing, "phone-1");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].re.as_deref(), Some(claims.jti.as_str()));
    assert!(
        matches!(&answers[0].msg, PhonePush::Rejected(r) if r.reason == RejectReason::Malformed)
    );
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
    // Signed by a stranger's key on phone-1's topic: silence.
    let mut stranger = TestDevice::new("phone-1");
    let claims = stranger.claims(&hub, rig.now(), body);
    let h = rig.hub.handle(&phone.phone_up(), &stranger.seal(&claims));
    assert!(h.result.is_err() && h.outgoing.is_empty(), "{:?}", h.result);
}

/// Spec problem 2: a second, unrestricted device of the account, which never received the
/// `ConfirmRequest`, cannot confirm the first device's withdrawal.
#[test]
fn only_the_device_that_staged_a_withdrawal_may_confirm_it() {
    let (mut rig, mut phone, mut atm) = setup(78);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    // A second device, approved by the owner, so not restricted.
    let mut second = TestDevice::new("phone-2");
    let h = rig.login(&mut second, "hanako");
    let alert = match rig.pushes(&h.outgoing, "phone-1").pop().map(|c| c.msg) {
        Some(PhonePush::NewDeviceAlert(a)) => a,
        other => panic!("{other:?}"),
    };
    rig.phone(
        &mut phone,
        PhoneUp::AnswerNewDeviceAlert(qrcash_protocol::messages::AnswerNewDeviceAlert {
            alert_id: alert.alert_id,
            not_me: false,
        }),
    );
    let h = rig.confirm(&mut second, &req);
    assert_eq!(
        refused(&h),
        RejectReason::TransactionMismatch {
            field: "device_id".into()
        }
    );
    assert!(rig.order(&h.outgoing, "atm-1").is_none());
    rig.confirm_order(&mut phone, &req);
}

/// The outbox rows waiting, oldest first.
fn outbox_rows(rig: &Rig) -> Vec<i64> {
    let db = rig.hub.store().db();
    let rows = db
        .test_texts("SELECT CAST(id AS TEXT) FROM outbox ORDER BY id")
        .unwrap();
    rows.iter().map(|r| r.parse().unwrap()).collect()
}

fn outbox_ids(out: &[super::Outgoing]) -> Vec<i64> {
    out.iter()
        .map(|o| o.outbox.expect("kept in the outbox"))
        .collect()
}

#[test]
fn answers_wait_in_the_outbox_until_published_and_go_out_again_in_a_fresh_envelope() {
    let (rig, mut phone, mut atm) = setup(41);
    let mut rig = rig.with_outbox();
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    // The code, the ATM's `AwaitConfirmation` and `Ack`, and the confirmation request went
    // out: the publisher confirms them.
    let published = outbox_rows(&rig);
    assert_eq!(published.len(), 4, "{published:?}");
    assert_eq!(rig.hub.confirm_published(&published).unwrap(), 4);
    assert!(outbox_rows(&rig).is_empty());

    // The confirmation's answers are kept with the decision; this instance dies before it
    // publishes them.
    let h = rig.confirm(&mut phone, &req);
    assert_eq!(h.result, Ok(Disposition::Applied));
    let kept = outbox_ids(&h.outgoing);
    assert_eq!(outbox_rows(&rig), kept);
    let order = rig.order(&h.outgoing, "atm-1").expect("dispense order");

    // Not due before `outbox_retry_s` (10 s).
    rig.clock.advance(Duration::from_secs(9));
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!((out.len(), report.outbox_resent), (0, 0));
    rig.clock.advance(Duration::from_secs(1));
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!(report.outbox_resent, kept.len());
    assert_eq!(
        outbox_ids(&out),
        kept,
        "each names its row, to be confirmed"
    );
    for (first, again) in h.outgoing.iter().zip(&out) {
        assert_eq!(first.topic, again.topic);
        let x: Claims<serde_json::Value> = open(first, &rig.hub_key());
        let y: Claims<serde_json::Value> = open(again, &rig.hub_key());
        assert_eq!((&x.aud, &x.re, &x.msg), (&y.aud, &y.re, &y.msg));
        assert!(y.seq > x.seq && x.jti != y.jti && y.iat == rig.now());
        assert_eq!(y.exp, x.exp, "a resend expires when the answer did");
    }
    assert_eq!(rig.order(&out, "atm-1"), Some(order));
    // Taken: due again only a retry period later, then again until confirmed.
    let (out, _) = rig.hub.sweep().unwrap();
    assert!(out.is_empty());
    rig.clock.advance(Duration::from_secs(10));
    let (out, _) = rig.hub.sweep().unwrap();
    assert_eq!(outbox_ids(&out), kept);
    assert_eq!(rig.hub.confirm_published(&kept).unwrap(), kept.len());
    rig.clock.advance(Duration::from_secs(10));
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!((out.len(), report.outbox_resent), (0, 0));
    assert!(outbox_rows(&rig).is_empty());

    // An answer never confirmed is forgotten when it expires (its receiver would refuse it).
    let h = rig.phone(
        &mut phone,
        PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
            account: "hanako".into(),
            amount: jpy(10_000),
        }),
    );
    assert_eq!(outbox_rows(&rig), outbox_ids(&h.outgoing));
    let exp = open::<PhonePush>(&h.outgoing[0], &rig.hub_key()).exp;
    rig.clock.advance(Duration::from_secs(exp - rig.now()));
    let (out, report) = rig.hub.sweep().unwrap();
    assert_eq!((report.outbox_resent, report.outbox_expired), (0, 1));
    assert_eq!(
        outbox_rows(&rig),
        outbox_ids(&out),
        "only the sweep's own answers wait"
    );
    assert_books(&rig);
}

#[test]
fn an_atm_back_online_gets_its_outstanding_order_again() {
    let (mut rig, mut phone, mut atm) = setup(42);
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    rig.clock.advance(Duration::from_secs(5));
    let h = rig.hub.handle(&topics::atm_presence("atm-1"), b"offline");
    assert_eq!(h.result, Ok(Disposition::Presence));
    assert!(h.outgoing.is_empty());
    // Another ATM coming online is not sent atm-1's order.
    rig.atm("atm-2");
    let h = rig.hub.handle(&topics::atm_presence("atm-2"), b"online");
    assert_eq!(h.result, Ok(Disposition::Presence));
    assert!(h.outgoing.is_empty());

    let h = rig.hub.handle(&topics::atm_presence("atm-1"), b"online");
    assert_eq!(h.result, Ok(Disposition::Presence));
    let downs = rig.downs(&h.outgoing, "atm-1");
    assert_eq!(downs.len(), 1);
    assert!(matches!(&downs[0].msg, AtmDown::DispenseOrder(o) if *o == order));
    assert_eq!(downs[0].iat, rig.now(), "a fresh envelope");
    let entry = audit::tail(rig.hub.store().db(), 1)
        .unwrap()
        .remove(0)
        .entry;
    assert_eq!(
        entry.detail.as_deref(),
        Some("online; outstanding orders sent again: 1")
    );

    // The agent restarted without the session and refuses the order: released at once.
    let h = rig.atm_send(
        &mut atm,
        AtmUp::OrderRefused(OrderRefused {
            order_id: order.order_id,
            tx_id: order.tx_id,
            reason: "not the transaction presented at this ATM".into(),
        }),
    );
    assert_eq!(h.result, Ok(Disposition::Applied));
    assert_eq!(phase(&rig, &code.tx_id), Phase::Failed);
    assert_eq!(balances(&rig, "hanako"), (100_000, 0));
    let h = rig.hub.handle(&topics::atm_presence("atm-1"), b"online");
    assert!(h.outgoing.is_empty(), "nothing outstanding");

    // An expired order is not sent again (the agent would refuse it; the sweeper settles it).
    let code = rig.register(&mut phone, "hanako", 10_000);
    let req = rig.present(&mut atm, &code.token, "phone-1");
    let order = rig.confirm_order(&mut phone, &req);
    rig.clock
        .advance(Duration::from_secs(order.expires_at - rig.now()));
    let h = rig.hub.handle(&topics::atm_presence("atm-1"), b"online");
    assert!(h.outgoing.is_empty());
    assert_books(&rig);
}

#[test]
fn a_batch_runs_sender_by_sender_keeping_each_senders_order() {
    let m = |t: &str| super::Incoming::new(t, Vec::new());
    let batch = [
        m("qrcash/v1/phone/b/up"),
        m("qrcash/v1/atm/z/up"),
        m("qrcash/v1/phone/a/up"),
        m("qrcash/v1/atm/z/presence"),
        m("qrcash/v1/phone/b/up"),
        m("qrcash/v1/atm/y/up"),
    ];
    // ATM z's `up` before its `presence` (one sender, arrival order); phone b's two messages
    // in arrival order; senders in one fixed order.
    assert_eq!(super::sender_order(&batch), [5, 1, 3, 2, 0, 4]);
}
