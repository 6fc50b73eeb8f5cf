//! The new-device restriction, point by point, through the hub's pure handler
//! (`Hub::handle` via `testkit::Rig`): real keys, signatures and SQLite, a hand-moved clock.
//!
//! Each test is one point of the issue "Hub: new-device login detection and restriction of
//! asset-decreasing functions"; `docs/restriction.md` ("Tests") maps points to tests. A refused
//! operation is checked twice: the typed reason in the result and in the `Rejected` push
//! answering the message, and a snapshot of balances, postings, withdrawals, operations,
//! payments and payouts that must not move.

use std::time::Duration;

use qrcash_hub::admin::{self, NewBankAccount, NewMerchant};
use qrcash_hub::handler::{Disposition, Handled};
use qrcash_hub::store::ledger as books;
use qrcash_hub::testkit::{
    PIN, Rig, SHIBUYA, TestDevice, confirm_message, login_message, near_atm,
};
use qrcash_protocol::messages::{
    AnswerNewDeviceAlert, AtmDown, BalanceQuery, BankWithdrawal, ConfirmRequest, LoginResult,
    NewDeviceAlert, Payment, PhonePush, PhoneUp, ReceiptKind, RegisterWithdrawal,
    RestrictionReason, TopUp, Transfer,
};
use qrcash_protocol::{Amount, Currency, Position, RejectReason};

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
/// Osaka, about 400 km from Shibuya.
const OSAKA: (f64, f64) = (34.7025, 135.4959);
/// Shinjuku, about 3.5 km from Shibuya.
const SHINJUKU: (f64, f64) = (35.6900, 139.7000);

fn jpy(v: u64) -> Amount {
    Amount::new(v, Currency::JPY)
}

fn at(place: (f64, f64)) -> Position {
    Position::new(place.0, place.1, 20.0)
}

/// The refusal reason of a handled message, and that the sender got it as a `Rejected`
/// answering that message.
fn refusal(rig: &Rig, h: &Handled, device: &str) -> RejectReason {
    let reason = match &h.result {
        Err(e) => e.reason(),
        Ok(d) => panic!("expected a refusal, got {d:?}"),
    };
    let pushes = rig.pushes(&h.outgoing, device);
    assert_eq!(pushes.len(), 1, "only the Rejected goes out: {pushes:?}");
    assert!(pushes[0].re.is_some(), "the Rejected answers the message");
    match &pushes[0].msg {
        PhonePush::Rejected(r) => assert_eq!(r.reason, reason),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(h.outgoing.len(), 1, "nothing but the Rejected is sent");
    reason
}

fn applied(h: &Handled) {
    assert_eq!(h.result, Ok(Disposition::Applied), "{:?}", h.result);
}

fn login_result(rig: &Rig, h: &Handled, device: &str) -> LoginResult {
    applied(h);
    match rig
        .pushes(&h.outgoing, device)
        .first()
        .map(|c| c.msg.clone())
    {
        Some(PhonePush::LoginResult(r)) => r,
        other => panic!("expected LoginResult, got {other:?}"),
    }
}

fn alert_to(rig: &Rig, h: &Handled, device: &str) -> NewDeviceAlert {
    match rig.pushes(&h.outgoing, device).pop().map(|c| c.msg) {
        Some(PhonePush::NewDeviceAlert(a)) => a,
        other => panic!("expected NewDeviceAlert to {device}, got {other:?}"),
    }
}

fn log_in(rig: &mut Rig, dev: &mut TestDevice, account: &str, place: Option<Position>) -> Handled {
    let msg = login_message(dev, account, place);
    rig.phone(dev, msg)
}

/// Logs `dev` in and returns the `until` of its timed restriction (panics if free).
fn restricted_until(rig: &mut Rig, dev: &mut TestDevice, account: &str, place: Position) -> u64 {
    let h = log_in(rig, dev, account, Some(place));
    let r = login_result(rig, &h, &dev.id);
    assert!(r.new_device);
    let info = r.restriction.expect("a new device far away is restricted");
    info.until.expect("a new-device restriction is timed")
}

fn count(rig: &Rig, table: &str) -> i64 {
    rig.hub
        .store()
        .db()
        .read_i64(&format!("SELECT COUNT(*) FROM {table}"))
        .unwrap_or_else(|e| panic!("{table}: {e}"))
}

/// Everything an asset-decreasing operation would change.
#[derive(Debug, PartialEq)]
struct Books {
    balances: Vec<(u64, u64)>,
    postings: i64,
    withdrawals: i64,
    phases: Vec<String>,
    operations: i64,
    payments: i64,
    payouts: i64,
}

fn books(rig: &Rig, accounts: &[&str]) -> Books {
    let phases = rig
        .hub
        .store()
        .db()
        .test_texts("SELECT phase FROM withdrawals ORDER BY tx_id")
        .unwrap_or_else(|e| panic!("{e}"));
    let report = admin::ledger_check(rig.hub.store()).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{report}");
    Books {
        balances: accounts
            .iter()
            .map(|a| {
                books::customer_balances(rig.hub.store().db(), a).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect(),
        postings: count(rig, "postings"),
        withdrawals: count(rig, "withdrawals"),
        phases,
        operations: count(rig, "operations"),
        payments: count(rig, "payments"),
        payouts: count(rig, "payouts"),
    }
}

fn rejected_audit_entries(rig: &Rig) -> i64 {
    rig.hub
        .store()
        .db()
        .read_i64("SELECT COUNT(*) FROM audit WHERE outcome = 'rejected'")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn merchant_at(rig: &mut Rig, id: &str, place: (f64, f64)) {
    let now = rig.now();
    admin::add_merchant(
        rig.hub.store_mut(),
        &NewMerchant {
            id: id.into(),
            name: format!("Shop {id}"),
            currency: Currency::JPY,
            position: Position::new(place.0, place.1, 0.0),
        },
        now,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn register(account: &str, yen: u64) -> PhoneUp {
    PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
        account: account.into(),
        amount: jpy(yen),
    })
}

fn transfer(key: &str, to: &str, yen: u64) -> PhoneUp {
    PhoneUp::Transfer(Transfer {
        idempotency_key: key.into(),
        to_account: to.into(),
        amount: jpy(yen),
        memo: None,
    })
}

fn payment(key: &str, merchant: &str, yen: u64) -> PhoneUp {
    PhoneUp::Payment(Payment {
        idempotency_key: key.into(),
        merchant_id: merchant.into(),
        amount: jpy(yen),
    })
}

fn bank_withdrawal(key: &str, yen: u64) -> PhoneUp {
    PhoneUp::BankWithdrawal(BankWithdrawal {
        idempotency_key: key.into(),
        bank_account: "bank-hanako".into(),
        amount: jpy(yen),
    })
}

fn balance_query(account: &str) -> PhoneUp {
    PhoneUp::BalanceQuery(BalanceQuery {
        account: account.into(),
        history: 5,
    })
}

fn top_up(key: &str, yen: u64) -> PhoneUp {
    PhoneUp::TopUp(TopUp {
        idempotency_key: key.into(),
        amount: jpy(yen),
        from: qrcash_hub::testkit::funding("hanako"),
    })
}

/// The five asset-decreasing requests (a confirmation needs a presented withdrawal, so it
/// is passed in).
fn money_out(
    tag: &str,
    from: &TestDevice,
    confirm: &ConfirmRequest,
) -> Vec<(&'static str, PhoneUp)> {
    vec![
        ("RegisterWithdrawal", register("hanako", 10_000)),
        (
            "ConfirmWithdrawal",
            confirm_message(from, confirm, Some(PIN), Some(near_atm())),
        ),
        ("Transfer", transfer(&format!("{tag}-tr"), "taro", 1_000)),
        ("Payment", payment(&format!("{tag}-pay"), "cafe", 780)),
        (
            "BankWithdrawal",
            bank_withdrawal(&format!("{tag}-bw"), 2_000),
        ),
    ]
}

/// `hanako` (100,000 yen) on `phone-1` logged in at the ATM; `taro` (50,000 yen) on
/// `phone-taro`; merchant `cafe` and ATM `atm-1` in Shibuya; a bank account for hanako.
struct World {
    rig: Rig,
    owner: TestDevice,
    taro: TestDevice,
    atm: TestDevice,
}

fn world(seed: u64) -> World {
    let mut rig = Rig::in_memory(seed);
    rig.account("hanako", 100_000);
    rig.account("taro", 50_000);
    let atm = rig.atm("atm-1");
    rig.merchant("cafe");
    let now = rig.now();
    admin::add_bank_account(
        rig.hub.store_mut(),
        &NewBankAccount {
            id: "bank-hanako".into(),
            account: "hanako".into(),
            bank: "Mizuho".into(),
            number: "1234567".into(),
            holder: "HANAKO".into(),
        },
        now,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut owner = TestDevice::new("phone-1");
    let h = rig.login(&mut owner, "hanako");
    let r = login_result(&rig, &h, "phone-1");
    assert!(!r.new_device && r.restriction.is_none(), "{r:?}");
    let mut taro = TestDevice::new("phone-taro");
    applied(&rig.login(&mut taro, "taro"));
    World {
        rig,
        owner,
        taro,
        atm,
    }
}

/// The owner registers a withdrawal and shows the code at the ATM: the ConfirmRequest.
fn presented(w: &mut World, yen: u64) -> ConfirmRequest {
    let code = w.rig.register(&mut w.owner, "hanako", yen);
    w.rig.present(&mut w.atm, &code.token, "phone-1")
}

// ---------------------------------------------------------------------------------------
// 1. Restricted: every asset-decreasing function; free: the others
// ---------------------------------------------------------------------------------------

#[test]
fn a_new_device_is_refused_every_asset_decreasing_function_and_nothing_changes() {
    let mut w = world(101);
    // A day later a second device logs in from Osaka: a new device beyond range.
    w.rig.clock.advance(Duration::from_secs(DAY));
    let mut thief = TestDevice::new("phone-osaka");
    let until = restricted_until(&mut w.rig, &mut thief, "hanako", at(OSAKA));
    // A withdrawal of the account waits at the ATM, so a confirmation has something to hit.
    let request = presented(&mut w, 20_000);
    let before = books(&w.rig, &["hanako", "taro"]);
    let audit_before = rejected_audit_entries(&w.rig);
    let ops = money_out("thief", &thief, &request);
    let n = ops.len() as i64;
    for (name, msg) in ops {
        let h = w.rig.phone(&mut thief, msg);
        assert_eq!(
            refusal(&w.rig, &h, "phone-osaka"),
            RejectReason::Restricted { until },
            "{name}"
        );
        assert!(w.rig.order(&h.outgoing, "atm-1").is_none(), "{name}");
        assert_eq!(
            books(&w.rig, &["hanako", "taro"]),
            before,
            "{name} changed the books"
        );
    }
    assert_eq!(rejected_audit_entries(&w.rig), audit_before + n);
    // The owner's phone is not affected: it confirms the same withdrawal.
    let order = w.rig.confirm_order(&mut w.owner, &request);
    assert_eq!(order.amount, jpy(20_000));
}

#[test]
fn a_restricted_device_keeps_balance_and_incoming_transfers_but_no_top_up() {
    let mut w = world(102);
    w.rig.clock.advance(Duration::from_secs(DAY));
    let mut thief = TestDevice::new("phone-osaka");
    let until = restricted_until(&mut w.rig, &mut thief, "hanako", at(OSAKA));

    let h = w.rig.phone(&mut thief, balance_query("hanako"));
    applied(&h);
    match w
        .rig
        .pushes(&h.outgoing, "phone-osaka")
        .pop()
        .map(|c| c.msg)
    {
        Some(PhonePush::Balance(b)) => assert_eq!(b.available, jpy(100_000)),
        other => panic!("expected Balance, got {other:?}"),
    }

    // A top-up draws on the owner's linked bank account: refused like money out.
    let h = w.rig.phone(&mut thief, top_up("t-1", 5_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );

    // Receiving a transfer is free: taro pays hanako, the restricted device hears of it.
    let h = w
        .rig
        .phone(&mut w.taro, transfer("taro-1", "hanako", 3_000));
    applied(&h);
    match w
        .rig
        .pushes(&h.outgoing, "phone-osaka")
        .pop()
        .map(|c| c.msg)
    {
        Some(PhonePush::Receipt(r)) => {
            assert_eq!(r.kind, ReceiptKind::TransferReceived);
            assert_eq!(r.balance, jpy(103_000));
        }
        other => panic!("expected TransferReceived, got {other:?}"),
    }
    let db = w.rig.hub.store().db();
    assert_eq!(
        books::customer_balances(db, "hanako").ok(),
        Some((103_000, 0))
    );
    assert_eq!(books::customer_balances(db, "taro").ok(), Some((47_000, 0)));

    // Logging in again is free and keeps the same restriction.
    let h = log_in(&mut w.rig, &mut thief, "hanako", Some(at(OSAKA)));
    let r = login_result(&w.rig, &h, "phone-osaka");
    assert!(!r.new_device);
    assert_eq!(r.restriction.and_then(|r| r.until), Some(until));
    // ...and money out is still refused.
    let h = w.rig.phone(&mut thief, transfer("thief-2", "taro", 1_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );
}

// ---------------------------------------------------------------------------------------
// 2. The period shortens with login frequency
// ---------------------------------------------------------------------------------------

#[test]
fn the_period_is_shorter_for_an_account_that_logs_in_often() {
    let mut rig = Rig::in_memory(103);
    // Three accounts, logged in at the ATM once (rare), 5 times and 30 times in 30 days.
    let habits = [("rare", 1u64), ("weekly", 5), ("daily", 30)];
    let mut phones: Vec<TestDevice> = Vec::new();
    for (account, _) in habits {
        rig.account(account, 10_000);
        phones.push(TestDevice::new(&format!("{account}-phone")));
    }
    // Every account enrols its phone on day 0, 41 days before the new devices come: that
    // login is outside the 30-day window and does not count. Then daily logins on the last
    // `logins` of days 1..=40.
    for (i, (account, _)) in habits.iter().enumerate() {
        applied(&rig.login(&mut phones[i], account));
    }
    for day in 1..=40u64 {
        rig.clock.advance(Duration::from_secs(DAY));
        for (i, (account, logins)) in habits.iter().enumerate() {
            if day > 40 - *logins {
                applied(&rig.login(&mut phones[i], account));
            }
        }
    }
    // Almost a day after the last logins (so travel to Osaka is possible) a new device logs
    // in from Osaka to each account; the window then starts just before day 11.
    rig.clock.advance(Duration::from_secs(DAY - 1));
    let now = rig.now();
    let mut periods = Vec::new();
    let mut new_devices = Vec::new();
    for (account, _) in habits {
        let mut new = TestDevice::new(&format!("{account}-new"));
        let until = restricted_until(&mut rig, &mut new, account, at(OSAKA));
        periods.push(until - now);
        new_devices.push(new);
    }
    // The documented table: 1 login → 72 h, 5 → 38 h 24 min, 30 → 1 h.
    assert_eq!(periods, [72 * HOUR, 138_240, HOUR]);

    // A restricted device logging in often does not shorten the next new device's period.
    let noisy = &mut new_devices[0];
    for _ in 0..40 {
        rig.clock.advance(Duration::from_secs(60));
        applied(&log_in(&mut rig, noisy, "rare", Some(at(OSAKA))));
    }
    let mut third = TestDevice::new("rare-third");
    let until = restricted_until(&mut rig, &mut third, "rare", at(OSAKA));
    assert_eq!(until - rig.now(), 72 * HOUR);
}

// ---------------------------------------------------------------------------------------
// 3. The restriction lifts at its end
// ---------------------------------------------------------------------------------------

#[test]
fn a_restriction_lifts_at_until_on_the_next_request_and_by_the_sweeper() {
    let mut w = world(104);
    w.rig.clock.advance(Duration::from_secs(DAY));
    let mut first = TestDevice::new("phone-a");
    let until = restricted_until(&mut w.rig, &mut first, "hanako", at(OSAKA));
    let mut second = TestDevice::new("phone-b");
    let until_b = restricted_until(&mut w.rig, &mut second, "hanako", at(OSAKA));
    assert_eq!(until, until_b, "same account, same moment, same period");

    // One second before the end: still refused, and the sweeper leaves it alone.
    w.rig.clock.set(until - 1);
    let h = w.rig.phone(&mut first, transfer("a-1", "taro", 1_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-a"),
        RejectReason::Restricted { until }
    );
    let (_, report) = w.rig.hub.sweep().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.restrictions_lifted, 0);
    assert_eq!(
        admin::list_restrictions(w.rig.hub.store(), w.rig.now())
            .unwrap_or_else(|e| panic!("{e}"))
            .len(),
        2
    );

    // At `until` the next request passes, with no sweep in between.
    w.rig.clock.set(until);
    assert!(
        admin::list_restrictions(w.rig.hub.store(), w.rig.now())
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "an ended restriction is not listed as in force"
    );
    let h = w.rig.phone(&mut first, transfer("a-2", "taro", 1_000));
    applied(&h);
    let code = w.rig.register(&mut first, "hanako", 1_000);
    assert!(code.expires_at > until);

    // The sweeper clears the stored rows: both devices' restrictions end at `until`.
    let (_, report) = w.rig.hub.sweep().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.restrictions_lifted, 2);
    for id in ["phone-a", "phone-b"] {
        let d = qrcash_hub::store::rows::device(w.rig.hub.store().db(), id)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{id} enrolled"));
        assert_eq!(
            (d.restricted_until, d.restriction_reason),
            (None, None),
            "{id}"
        );
    }
    let h = w.rig.phone(&mut second, payment("b-1", "cafe", 500));
    applied(&h);
    let h = log_in(&mut w.rig, &mut second, "hanako", Some(at(OSAKA)));
    assert_eq!(login_result(&w.rig, &h, "phone-b").restriction, None);
}

// ---------------------------------------------------------------------------------------
// 4. Same place claimed: still restricted until the owner approves
// ---------------------------------------------------------------------------------------

#[test]
fn a_new_device_claiming_the_other_ones_place_is_restricted_until_the_owner_approves_it() {
    let mut w = world(105);
    w.rig.clock.advance(Duration::from_secs(HOUR));
    // Shinjuku, 3.5 km from where phone-1 last logged in: but only the device says so.
    let mut second = TestDevice::new("phone-2");
    let h = log_in(&mut w.rig, &mut second, "hanako", Some(at(SHINJUKU)));
    let r = login_result(&w.rig, &h, "phone-2");
    assert!(r.new_device);
    let info = r.restriction.expect("a claimed position never frees");
    assert_eq!(info.reason, RestrictionReason::NewDevice);
    let until = info.until.expect("timed");
    // The owner hears of it, with the restriction and no claimed position to trust.
    let alert = alert_to(&w.rig, &h, "phone-1");
    assert_eq!(alert.device_id, "phone-2");
    assert_eq!(alert.restricted_until, Some(until));
    assert_eq!(alert.position, None);
    let before = books(&w.rig, &["hanako", "taro"]);
    for msg in [
        transfer("s-1", "taro", 1_000),
        payment("s-2", "cafe", 500),
        bank_withdrawal("s-3", 1_000),
        register("hanako", 5_000),
    ] {
        let h = w.rig.phone(&mut second, msg);
        assert_eq!(
            refusal(&w.rig, &h, "phone-2"),
            RejectReason::Restricted { until }
        );
    }
    assert_eq!(books(&w.rig, &["hanako", "taro"]), before);

    // The owner approves it from the established phone: free at once, money moves.
    let h = w.rig.phone(
        &mut w.owner,
        PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
            alert_id: alert.alert_id,
            not_me: false,
        }),
    );
    applied(&h);
    assert!(
        admin::list_restrictions(w.rig.hub.store(), w.rig.now())
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    applied(&w.rig.phone(&mut second, transfer("s-1", "taro", 1_000)));
    applied(&w.rig.phone(&mut second, payment("s-2", "cafe", 500)));
    applied(&w.rig.phone(&mut second, bank_withdrawal("s-3", 1_000)));
    let code = w.rig.register(&mut second, "hanako", 5_000);
    let req = w.rig.present(&mut w.atm, &code.token, "phone-2");
    let order = w.rig.confirm_order(&mut second, &req);
    assert_eq!(order.amount, jpy(5_000));
}

// ---------------------------------------------------------------------------------------
// 5. A position estimated from payments says where the owner is
// ---------------------------------------------------------------------------------------

/// The hub estimates a position from payments when a device's logins carry none. A device
/// that is new to an account has no payments of its own there (a device belongs to one
/// account, and a re-keyed device's payments are deliberately its previous holder's), so the
/// estimate that decides in the hub is the one of the device already in use: here the
/// owner's phone never sent a position and only paid at shops. Against it, a newcomer's
/// claimed position can only make things stricter: far is the habit period, impossible is
/// the maximum, near is still the habit period.
#[test]
fn a_position_estimated_from_payments_locates_the_owner_and_claims_only_make_it_stricter() {
    let mut rig = Rig::in_memory(106);
    rig.account("hanako", 100_000);
    merchant_at(&mut rig, "konbini-shibuya", SHIBUYA);
    merchant_at(&mut rig, "ramen-shinjuku", SHINJUKU);
    merchant_at(&mut rig, "takoyaki-osaka", OSAKA);
    let mut owner = TestDevice::new("phone-1");
    applied(&log_in(&mut rig, &mut owner, "hanako", None));
    // The owner pays around Shibuya and Shinjuku over the morning; once, days ago, in Osaka.
    applied(&rig.phone(&mut owner, payment("p-0", "takoyaki-osaka", 900)));
    rig.clock.advance(Duration::from_secs(4 * DAY));
    for (i, shop) in ["konbini-shibuya", "ramen-shinjuku", "konbini-shibuya"]
        .iter()
        .enumerate()
    {
        rig.clock.advance(Duration::from_secs(HOUR));
        applied(&rig.phone(&mut owner, payment(&format!("p-{}", i + 1), shop, 500)));
    }
    rig.clock.advance(Duration::from_secs(2 * HOUR));

    // A new device in Osaka, where the owner paid once days ago: restricted.
    let mut far = TestDevice::new("phone-far");
    let h = log_in(&mut rig, &mut far, "hanako", Some(at(OSAKA)));
    let r = login_result(&rig, &h, "phone-far");
    assert!(r.new_device);
    let info = r.restriction.expect("far from the estimated position");
    // The estimate is timed at the owner's last payment two hours ago: Osaka is reachable
    // in that time, so this is a plain new device, not impossible travel.
    assert_eq!(info.reason, RestrictionReason::NewDevice);
    let until = info.until.expect("timed");
    assert!(until > rig.now());
    let h = rig.phone(&mut far, payment("f-1", "takoyaki-osaka", 300));
    assert_eq!(
        refusal(&rig, &h, "phone-far"),
        RejectReason::Restricted { until }
    );

    // A new device claiming Shibuya, where the estimate puts the owner: restricted all the
    // same, for the same habit period.
    let mut near = TestDevice::new("phone-near");
    let h = log_in(&mut rig, &mut near, "hanako", Some(near_atm()));
    let info = login_result(&rig, &h, "phone-near")
        .restriction
        .expect("a claim never frees");
    assert_eq!(info.reason, RestrictionReason::NewDevice);
    assert_eq!(info.until, Some(until));

    // Mirror image: an account whose phone pays only in Osaka.
    rig.account("kenji", 100_000);
    let mut kenji = TestDevice::new("kenji-phone");
    applied(&log_in(&mut rig, &mut kenji, "kenji", None));
    for i in 0..3 {
        rig.clock.advance(Duration::from_secs(HOUR));
        applied(&rig.phone(
            &mut kenji,
            payment(&format!("k-{i}"), "takoyaki-osaka", 400),
        ));
    }
    // In Tokyo the same second kenji's phone paid in Osaka: impossible travel, the maximum.
    let mut in_tokyo = TestDevice::new("kenji-tokyo");
    let h = log_in(&mut rig, &mut in_tokyo, "kenji", Some(near_atm()));
    let info = login_result(&rig, &h, "kenji-tokyo").restriction;
    assert_eq!(
        info.map(|i| i.reason),
        Some(RestrictionReason::ImpossibleTravel)
    );
    // Claiming Osaka next to kenji's phone: a plain new device.
    let mut in_osaka = TestDevice::new("kenji-osaka");
    let h = log_in(&mut rig, &mut in_osaka, "kenji", Some(at(OSAKA)));
    let info = login_result(&rig, &h, "kenji-osaka").restriction;
    assert_eq!(info.map(|i| i.reason), Some(RestrictionReason::NewDevice));

    // An estimate ages out of trust: three days after the last payment next to the ATM,
    // a new device there is restricted like one next to an unknown position.
    rig.account("yumi", 100_000);
    let mut yumi = TestDevice::new("yumi-phone");
    applied(&log_in(&mut rig, &mut yumi, "yumi", None));
    for i in 0..3 {
        applied(&rig.phone(
            &mut yumi,
            payment(&format!("y-{i}"), "konbini-shibuya", 200),
        ));
    }
    rig.clock.advance(Duration::from_secs(3 * DAY));
    let mut yumi_new = TestDevice::new("yumi-new");
    let h = log_in(&mut rig, &mut yumi_new, "yumi", Some(near_atm()));
    assert!(login_result(&rig, &h, "yumi-new").restriction.is_some());
}

// ---------------------------------------------------------------------------------------
// 6. Impossible travel
// ---------------------------------------------------------------------------------------

#[test]
fn impossible_travel_restricts_for_the_maximum_period_whatever_the_habits() {
    let mut w = world(107);
    // The owner logs in every day for a month: a new device would get the 1 h minimum.
    for _ in 0..30 {
        w.rig.clock.advance(Duration::from_secs(DAY));
        applied(&w.rig.login(&mut w.owner, "hanako"));
    }
    let max = w.rig.hub.config().restriction.max_period_secs;

    // Ten minutes after the owner's login in Shibuya, a device logs in from Osaka.
    w.rig.clock.advance(Duration::from_secs(600));
    let mut thief = TestDevice::new("phone-osaka");
    let h = log_in(&mut w.rig, &mut thief, "hanako", Some(at(OSAKA)));
    let r = login_result(&w.rig, &h, "phone-osaka");
    let info = r.restriction.expect("restricted");
    assert_eq!(info.reason, RestrictionReason::ImpossibleTravel);
    assert_eq!(info.until, Some(w.rig.now() + max));
    assert_eq!(alert_to(&w.rig, &h, "phone-1").restricted_until, info.until);
    let until = w.rig.now() + max;
    let h = w.rig.phone(&mut thief, register("hanako", 10_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );

    // The same trip in half a day is possible: a plain new-device restriction of 1 h.
    w.rig.clock.advance(Duration::from_secs(DAY));
    applied(&w.rig.login(&mut w.owner, "hanako"));
    w.rig.clock.advance(Duration::from_secs(DAY / 2));
    let mut traveller = TestDevice::new("phone-trip");
    let h = log_in(&mut w.rig, &mut traveller, "hanako", Some(at(OSAKA)));
    let info = login_result(&w.rig, &h, "phone-trip")
        .restriction
        .expect("restricted");
    assert_eq!(info.reason, RestrictionReason::NewDevice);
    assert_eq!(info.until, Some(w.rig.now() + HOUR));
}

// ---------------------------------------------------------------------------------------
// 7. "Not me" freezes
// ---------------------------------------------------------------------------------------

#[test]
fn not_me_revokes_the_new_device_and_freezes_the_account_until_an_operator_unfreezes_it() {
    let mut w = world(108);
    // A withdrawal of the owner waits at the ATM when the alert comes.
    let request = presented(&mut w, 20_000);
    w.rig.clock.advance(Duration::from_secs(60));
    let mut thief = TestDevice::new("phone-osaka");
    let h = log_in(&mut w.rig, &mut thief, "hanako", Some(at(OSAKA)));
    let until = login_result(&w.rig, &h, "phone-osaka")
        .restriction
        .and_then(|r| r.until)
        .expect("restricted");
    let alert = alert_to(&w.rig, &h, "phone-1");
    assert_eq!(alert.device_id, "phone-osaka");

    let h = w.rig.phone(
        &mut w.owner,
        PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
            alert_id: alert.alert_id.clone(),
            not_me: true,
        }),
    );
    applied(&h);

    // The new device is revoked: nothing works for it any more, not even logging in.
    let h = w.rig.phone(&mut thief, balance_query("hanako"));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::DeviceRevoked
    );
    let h = log_in(&mut w.rig, &mut thief, "hanako", Some(at(OSAKA)));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::DeviceRevoked
    );

    // The account is frozen for money out, for the owner's own phone too, and the freeze
    // outlives the new device's restriction.
    let check_frozen = |w: &mut World, tag: &str, with_confirm: bool| {
        let before = books(&w.rig, &["hanako", "taro"]);
        let ops = money_out(tag, &w.owner, &request)
            .into_iter()
            .filter(|(name, _)| with_confirm || *name != "ConfirmWithdrawal");
        for (name, msg) in ops {
            let h = w.rig.phone(&mut w.owner, msg);
            assert_eq!(
                refusal(&w.rig, &h, "phone-1"),
                RejectReason::AccountFrozen,
                "{name}"
            );
            assert!(w.rig.order(&h.outgoing, "atm-1").is_none(), "{name}");
        }
        assert_eq!(books(&w.rig, &["hanako", "taro"]), before);
    };
    check_frozen(&mut w, "frozen-1", true);
    // Free functions stay free.
    applied(&w.rig.phone(&mut w.owner, balance_query("hanako")));
    // A top-up draws on the owner's bank: frozen with the rest of money movement.
    let h = w.rig.phone(&mut w.owner, top_up("owner-t", 1_000));
    assert_eq!(refusal(&w.rig, &h, "phone-1"), RejectReason::AccountFrozen);
    applied(
        &w.rig
            .phone(&mut w.taro, transfer("taro-1", "hanako", 1_000)),
    );

    // A day after the new device's restriction would have ended (the presented session has
    // long expired, so there is nothing left to confirm): still frozen.
    w.rig.clock.set(until + DAY);
    w.rig.hub.sweep().unwrap_or_else(|e| panic!("{e}"));
    applied(&w.rig.login(&mut w.owner, "hanako"));
    check_frozen(&mut w, "frozen-2", false);
    let view = admin::show_account(w.rig.hub.store(), "hanako").unwrap_or_else(|e| panic!("{e}"));
    assert!(view.account.frozen);

    // The operator clears the freeze after checking with the customer: free again.
    let now = w.rig.now();
    admin::unfreeze_account(w.rig.hub.store_mut(), "hanako", now).unwrap_or_else(|e| panic!("{e}"));
    applied(
        &w.rig
            .phone(&mut w.owner, transfer("after-1", "taro", 1_000)),
    );
    let code = w.rig.register(&mut w.owner, "hanako", 10_000);
    let req = w.rig.present(&mut w.atm, &code.token, "phone-1");
    let order = w.rig.confirm_order(&mut w.owner, &req);
    assert_eq!(order.amount, jpy(10_000));
    // The revoked device stays revoked.
    let h = log_in(&mut w.rig, &mut thief, "hanako", Some(at(OSAKA)));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::DeviceRevoked
    );
}

// ---------------------------------------------------------------------------------------
// 8. The whole ATM flow
// ---------------------------------------------------------------------------------------

#[test]
fn a_restricted_device_can_neither_register_nor_confirm_a_withdrawal_and_no_order_goes_out() {
    let mut w = world(109);
    w.rig.clock.advance(Duration::from_secs(DAY));
    let mut thief = TestDevice::new("phone-osaka");
    // The thief is at the ATM in Shibuya, but gave no position with the login.
    let h = log_in(&mut w.rig, &mut thief, "hanako", None);
    let until = login_result(&w.rig, &h, "phone-osaka")
        .restriction
        .and_then(|r| r.until)
        .expect("no position: restricted");

    // No code is issued.
    let before = books(&w.rig, &["hanako"]);
    let h = w.rig.phone(&mut thief, register("hanako", 10_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );
    assert_eq!(books(&w.rig, &["hanako"]), before);
    assert_eq!(before.withdrawals, 0);

    // A withdrawal of the account is presented at the ATM; the thief, standing there with
    // the PIN, tries to confirm it with the exact fields of the request.
    let request = presented(&mut w, 30_000);
    let before = books(&w.rig, &["hanako"]);
    assert_eq!(before.phases, ["presented"]);
    let msg = confirm_message(&thief, &request, Some(PIN), Some(near_atm()));
    let h = w.rig.phone(&mut thief, msg);
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );
    assert!(
        w.rig.downs(&h.outgoing, "atm-1").is_empty(),
        "nothing to the ATM"
    );
    assert_eq!(
        books(&w.rig, &["hanako"]),
        before,
        "no hold, no phase change"
    );
    // A wrong PIN would have counted; the refusal came first, so nothing is counted.
    let account = qrcash_hub::store::rows::account(w.rig.hub.store().db(), "hanako")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("hanako"));
    assert_eq!(account.pin, Default::default());

    // The owner's own confirmation still gets the one order.
    let h = w.rig.confirm(&mut w.owner, &request);
    let orders: Vec<_> = w
        .rig
        .downs(&h.outgoing, "atm-1")
        .into_iter()
        .filter(|c| matches!(c.msg, AtmDown::DispenseOrder(_)))
        .collect();
    assert_eq!(orders.len(), 1);
    assert_eq!(books(&w.rig, &["hanako"]).balances, [(70_000, 30_000)]);
}

// ---------------------------------------------------------------------------------------
// Regression
// ---------------------------------------------------------------------------------------

/// A second device of the fraudster must not be freed by logging in next to the first,
/// still restricted one: only the account's established devices say where the owner is.
#[test]
fn a_second_new_device_cannot_borrow_the_position_of_a_restricted_one() {
    let mut w = world(110);
    w.rig.clock.advance(Duration::from_secs(DAY));
    let mut thief = TestDevice::new("phone-osaka");
    restricted_until(&mut w.rig, &mut thief, "hanako", at(OSAKA));
    w.rig.clock.advance(Duration::from_secs(60));
    let mut second = TestDevice::new("phone-osaka-2");
    let until = restricted_until(&mut w.rig, &mut second, "hanako", at(OSAKA));
    let h = w.rig.phone(&mut second, transfer("t-1", "taro", 1_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka-2"),
        RejectReason::Restricted { until }
    );
}

/// Re-keying a restricted device (its id with a fresh key) asks the policy again; the new
/// verdict must not cut short the restriction still in force.
#[test]
fn re_keying_a_restricted_device_cannot_shorten_its_restriction() {
    let mut w = world(111);
    // A daily user: a new device's habit period is the 1 h minimum.
    for _ in 0..30 {
        w.rig.clock.advance(Duration::from_secs(DAY));
        applied(&w.rig.login(&mut w.owner, "hanako"));
    }
    // Ten minutes after the owner's login in Shibuya: Osaka is impossible, 72 h.
    w.rig.clock.advance(Duration::from_secs(600));
    let mut thief = TestDevice::new("phone-osaka");
    let until = restricted_until(&mut w.rig, &mut thief, "hanako", at(OSAKA));
    assert_eq!(until, w.rig.now() + 72 * HOUR);

    // Half a day later the same device id logs in with a fresh key: on its own the verdict
    // would be a plain new device for 1 h; the 72 h stand.
    w.rig.clock.advance(Duration::from_secs(DAY / 2));
    let mut rekeyed = TestDevice::new("phone-osaka");
    let h = log_in(&mut w.rig, &mut rekeyed, "hanako", Some(at(OSAKA)));
    let r = login_result(&w.rig, &h, "phone-osaka");
    assert!(r.new_device);
    assert_eq!(r.restriction.and_then(|i| i.until), Some(until));
    assert_eq!(
        alert_to(&w.rig, &h, "phone-1").restricted_until,
        Some(until)
    );
    let h = w.rig.phone(&mut rekeyed, transfer("t-1", "taro", 1_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );
    w.rig.clock.set(until - 1);
    let h = w.rig.phone(&mut rekeyed, transfer("t-2", "taro", 1_000));
    assert_eq!(
        refusal(&w.rig, &h, "phone-osaka"),
        RejectReason::Restricted { until }
    );
}

#[test]
fn a_restricted_device_neither_hears_of_nor_vetoes_the_owners_next_device() {
    let mut rig = Rig::in_memory(61);
    rig.account("hanako", 50_000);
    let mut owner = TestDevice::new("owner-old");
    applied(&log_in(&mut rig, &mut owner, "hanako", Some(at(SHIBUYA))));
    // A fraudster logs in from Osaka: restricted, the owner is alerted.
    let mut thief = TestDevice::new("thief");
    let h = log_in(&mut rig, &mut thief, "hanako", Some(at(OSAKA)));
    assert!(login_result(&rig, &h, "thief").restriction.is_some());
    let thief_alert = alert_to(&rig, &h, "owner-old");
    // The owner's new phone logs in at home: the owner's old phone is alerted, the thief's
    // restricted phone is not.
    let mut owner_new = TestDevice::new("owner-new");
    let h = log_in(&mut rig, &mut owner_new, "hanako", Some(at(SHIBUYA)));
    applied(&h);
    alert_to(&rig, &h, "owner-old");
    assert!(
        rig.pushes(&h.outgoing, "thief").is_empty(),
        "a restricted device was told about the owner's new phone"
    );
    // Even with an alert id in hand (the one about itself), the thief cannot say "not me".
    let h = rig.phone(
        &mut thief,
        PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
            alert_id: thief_alert.alert_id.clone(),
            not_me: true,
        }),
    );
    assert!(matches!(
        refusal(&rig, &h, "thief"),
        RejectReason::Restricted { .. }
    ));
    let devices = admin::list_devices(rig.hub.store(), Some("hanako")).unwrap();
    assert!(
        devices
            .iter()
            .all(|d| d.status == qrcash_hub::store::rows::DeviceStatus::Active),
        "{devices:?}"
    );
    assert!(
        !admin::show_account(rig.hub.store(), "hanako")
            .unwrap()
            .account
            .frozen
    );
}
