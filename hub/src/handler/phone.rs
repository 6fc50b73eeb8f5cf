//! Phone messages about sessions and withdrawals: `Login` (with the new-device restriction),
//! `RegisterWithdrawal`, `ConfirmWithdrawal`, `DeclineWithdrawal` and
//! `AnswerNewDeviceAlert`. Money operations are in [`super::money`].

use qrcash_protocol::messages::{
    AlertAnswered, AlertOutcome, AnswerNewDeviceAlert, AtmDown, CodeIssued, ConfirmWithdrawal,
    DeclineWithdrawal, DispenseOrder, IdentityEvidence, Login, LoginResult, NewDeviceAlert,
    PhonePush, PhoneUp, RegisterWithdrawal,
};
use qrcash_protocol::{
    Amount, CodeToken, OrderId, Position, PublicKey, RejectReason, SecretField, TxId,
};

use super::{Ctx, Fail, Outcome, Refusal, money, refuse, sessions, steps};
use crate::config::IdentityRule;
use crate::identity;
use crate::policy::{self, check_may_move_money};
use crate::restriction::{self, DeviceFix, Function, NewDeviceEvidence};
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, DeviceRow, DeviceStatus, WithdrawalRow};
use crate::store::trail;
use crate::throttle::{self, Failures};
use crate::withdrawal::{Event, Phase, TransitionError, transition};

/// Routes a phone message.
pub(super) fn dispatch(
    ctx: &mut Ctx<'_>,
    sender: &str,
    device: Option<&DeviceRow>,
    msg: &PhoneUp,
) -> Outcome {
    if let PhoneUp::Login(l) = msg {
        return login(ctx, sender, device, l);
    }
    let (device, account) = session(ctx, device)?;
    match msg {
        PhoneUp::Login(_) => unreachable_login(),
        PhoneUp::RegisterWithdrawal(r) => register(ctx, &device, &account, r),
        PhoneUp::ConfirmWithdrawal(c) => confirm(ctx, &device, &account, c),
        PhoneUp::DeclineWithdrawal(d) => decline(ctx, &device, &account, d),
        PhoneUp::AnswerNewDeviceAlert(a) => answer_alert(ctx, &device, &account, a),
        PhoneUp::Transfer(t) => money::transfer(ctx, &device, &account, t),
        PhoneUp::Payment(p) => money::payment(ctx, &device, &account, p),
        PhoneUp::BankWithdrawal(b) => money::bank_withdrawal(ctx, &device, &account, b),
        PhoneUp::TopUp(t) => money::top_up(ctx, &device, &account, t),
        PhoneUp::BalanceQuery(q) => money::balance(ctx, &device, &account, q),
        PhoneUp::ChangePassword(c) => sessions::change_password(ctx, &device, &account, c),
        PhoneUp::SignOutOtherDevices(_) => sessions::sign_out_others(ctx, &device, &account),
    }
}

fn unreachable_login() -> Outcome {
    Err(refuse(RejectReason::Internal, "login routed twice"))
}

/// The device must be enrolled, active and logged in; returns it with its account.
fn session(ctx: &Ctx<'_>, device: Option<&DeviceRow>) -> Result<(DeviceRow, AccountRow), Fail> {
    let d = device.ok_or_else(|| refuse(RejectReason::NotLoggedIn, "log in first"))?;
    if d.status == DeviceStatus::Revoked {
        return Err(refuse(
            RejectReason::DeviceRevoked,
            "this device was revoked; contact support",
        ));
    }
    let fresh = d
        .last_login_at
        .is_some_and(|t| ctx.now <= t.saturating_add(ctx.cfg.auth.session_ttl_s));
    if !fresh {
        return Err(refuse(
            RejectReason::NotLoggedIn,
            "the session has expired; log in again",
        ));
    }
    let account = rows::account(ctx.db, &d.account)?.ok_or_else(|| {
        refuse(
            RejectReason::UnknownAccount,
            format!("account {} no longer exists", d.account),
        )
    })?;
    Ok((d.clone(), account))
}

/// The request names the session's account (or another one, which is refused).
pub(super) fn own_account(ctx: &Ctx<'_>, account: &AccountRow, named: &str) -> Result<(), Fail> {
    if named == account.id {
        return Ok(());
    }
    if rows::account(ctx.db, named)?.is_some() {
        Err(refuse(
            RejectReason::NotLoggedIn,
            format!("this device is not logged in to account {named}"),
        ))
    } else {
        Err(refuse(
            RejectReason::UnknownAccount,
            format!("no account {named}"),
        ))
    }
}

/// An amount must be positive, in the account currency and storable.
pub(super) fn check_amount(account: &AccountRow, amount: &Amount) -> Result<(), Fail> {
    if amount.currency != account.currency {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!(
                "the account is in {}, not {}",
                account.currency, amount.currency
            ),
        ));
    }
    if amount.minor == 0 || i64::try_from(amount.minor).is_err() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!("{amount} is not a valid amount"),
        ));
    }
    Ok(())
}

pub(super) fn gate(
    ctx: &Ctx<'_>,
    account: &AccountRow,
    device: &DeviceRow,
    f: Function,
) -> Result<(), Fail> {
    check_may_move_money(account, device, f, ctx.now).map_err(|reason| {
        let message = match &reason {
            RejectReason::AccountFrozen => {
                "the account's payments are frozen until support clears them".to_owned()
            }
            RejectReason::Restricted { until } => {
                format!("this new device may not move money out until {until}")
            }
            _ => "this device may not move money out".to_owned(),
        };
        refuse(reason, message)
    })
}

// ---------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------

fn login(ctx: &mut Ctx<'_>, sender: &str, device: Option<&DeviceRow>, l: &Login) -> Outcome {
    if l.device.device_id != sender {
        return Err(refuse(
            RejectReason::WrongAddress,
            "device_id differs from the sender",
        ));
    }
    if let Some(p) = &l.position {
        p.validate()
            .map_err(|e| refuse(RejectReason::Malformed, format!("position: {e}")))?;
    }
    let key = PublicKey::from_jwk(&l.device.public_key)
        .map_err(|e| refuse(RejectReason::BadSignature, e.to_string()))?;
    // A revoked device, or one enrolled for another account, is refused before any password
    // is checked, with the same answer whatever the password: it must not be an oracle that
    // tells its holder whether a password is right.
    if let Some(d) = device {
        if d.status == DeviceStatus::Revoked {
            return Err(refuse(
                RejectReason::DeviceRevoked,
                "this device was revoked; contact support",
            ));
        }
        if d.account != l.account {
            ctx.note(format!("device {} is enrolled for another account", d.id));
            return Err(refuse(
                RejectReason::BadCredentials,
                "wrong account or password",
            ));
        }
    }
    let account = check_password(ctx, sender, device, &key, l)?;
    let jwk = serde_json::to_string(&l.device.public_key)
        .map_err(|e| refuse(RejectReason::Malformed, e.to_string()))?;
    let all_others: Vec<DeviceRow> = rows::devices(ctx.db, Some(&account.id))?
        .into_iter()
        .filter(|d| d.id != sender)
        .collect();
    // Any device the account ever had makes this one new, revoked ones included: right
    // after a revoke (a lost phone) or a "not me" is exactly when a fraudster's device
    // arrives, and with no established device to vouch for it, it gets the habit period.
    let had_devices = !all_others.is_empty();
    let others: Vec<DeviceRow> = all_others
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Active)
        .collect();
    let rekeyed = device.is_some_and(|d| d.kid != key.kid().as_str());
    // A new key for a known device id is a new device too: otherwise a stolen password
    // could re-key the owner's device and skip the restriction. Its previous logins stand
    // for "the device already in use".
    let new_device = (device.is_none() && had_devices) || rekeyed;
    let decision = if new_device {
        let mut existing = others.clone();
        existing.extend(device.filter(|_| rekeyed).cloned());
        Some(decide_new_device(
            ctx, sender, &existing, rekeyed, l.position,
        )?)
    } else {
        None
    };
    let row = DeviceRow {
        id: sender.to_owned(),
        account: account.id.clone(),
        name: l.device.name.chars().take(64).collect(),
        public_jwk: jwk,
        kid: key.kid().as_str().to_owned(),
        status: DeviceStatus::Active,
        enrolled_at: device.map_or(ctx.now, |d| d.enrolled_at),
        key_changed_at: match device {
            Some(d) if !rekeyed => d.key_changed_at,
            _ => ctx.now,
        },
        last_login_at: Some(ctx.now),
        restricted_until: None,
        restriction_reason: None,
        revoked_reason: None,
    };
    rows::upsert_device_login(ctx.db, &row, ctx.now, l.position.as_ref(), new_device)?;
    let mut out = Vec::new();
    match decision {
        Some((decision, observed)) => {
            out.extend(apply_new_device(
                ctx, &account, &row, &others, decision, observed, rekeyed,
            )?);
        }
        None => ctx.note(format!("login of {} to {}", row.id, account.id)),
    }
    let stored = rows::device(ctx.db, sender)?.unwrap_or(row);
    let restriction = policy::effective_restriction(&account, &stored, ctx.now).map(|r| r.info());
    out.insert(
        0,
        ctx.push_phone(
            sender,
            PhonePush::LoginResult(LoginResult {
                account: account.id.clone(),
                device_id: sender.to_owned(),
                new_device,
                restriction,
            }),
        )?,
    );
    Ok(out)
}

/// Checks a login's password, throttled (`crate::throttle`): the device id's failures, and
/// the account name's unless the device is the account's own established one with its
/// enrolled key (so guessing from elsewhere cannot lock the owner's phone out). A locked
/// subject is refused before any argon2 runs; an unknown account is checked against a decoy
/// hash of the same cost, so it answers as slowly as a known one. A wrong password is
/// counted (kept although the login is refused); a right one clears both counts.
fn check_password(
    ctx: &mut Ctx<'_>,
    sender: &str,
    device: Option<&DeviceRow>,
    key: &PublicKey,
    l: &Login,
) -> Result<AccountRow, Fail> {
    let own = device.is_some_and(|d| {
        d.account == l.account && d.status == DeviceStatus::Active && d.kid == key.kid().as_str()
    });
    let subjects = throttle::subjects(sender, &l.account, own);
    for subject in &subjects {
        if let Err(until) = rows::login_failures(ctx.db, subject)?.check(ctx.now) {
            return Err(refuse(
                RejectReason::LoginThrottled { until },
                format!("too many wrong passwords; try again from {until}"),
            ));
        }
    }
    // A device id gets a bounded number of successful logins a minute (each costs argon2 and
    // a `logins` row); wrong ones are bounded by the failure counts above.
    let minute_ago = ctx.now.saturating_sub(59);
    let (recent, oldest) = trail::logins_since(ctx.db, sender, minute_ago)?;
    if recent >= u64::from(ctx.cfg.auth.logins_per_device_per_minute) {
        let until = oldest.unwrap_or(ctx.now).saturating_add(60);
        return Err(refuse(
            RejectReason::LoginThrottled { until },
            format!("too many logins from this device; try again from {until}"),
        ));
    }
    let password = ctx.open_secret(&l.password, SecretField::Password)?;
    let account = rows::account(ctx.db, &l.account)?;
    let decoy = identity::decoy_hash(ctx.cfg.auth.hash_cost());
    let phc = account.as_ref().map_or(decoy, |a| a.password_hash.as_str());
    let matches = ctx.secret_matches(password.expose(), phc);
    match account {
        Some(account) if matches => {
            // A right password from elsewhere clears the account's count (whoever sent it
            // needs no more guesses). It never clears the device's: a device of the
            // fraudster's own account must not wash its failures against other accounts away
            // with a login to its own; the device's count is forgotten after an hour of quiet.
            if !own {
                let subject = throttle::account_subject(&l.account);
                rows::save_login_failures(ctx.db, &subject, &Failures::default())?;
            }
            Ok(account)
        }
        _ => {
            let policy = ctx.cfg.auth.throttle();
            for subject in &subjects {
                let f = rows::login_failures(ctx.db, subject)?.fail(ctx.now, &policy);
                rows::save_login_failures(ctx.db, subject, &f)?;
            }
            ctx.note(format!("wrong password or account from {sender}"));
            Err(refuse_keeping(
                RejectReason::BadCredentials,
                "wrong account or password".into(),
                Vec::new(),
            ))
        }
    }
}

/// The new-device policy's verdict ([`restriction::decide`]) from what was known before
/// this login: where the hub itself saw the new device (its own payments and code
/// presentations, unless it is a re-keyed device, whose history is its previous owner's),
/// where it claims to be, and the last fix and login count of the established (unrestricted)
/// devices already in use. Returns the observed fix too, the only position the owner's alert
/// shows: a claim would put the owner's own neighbourhood on a fraudster's alert.
fn decide_new_device(
    ctx: &Ctx<'_>,
    new_id: &str,
    existing: &[DeviceRow],
    rekeyed: bool,
    claimed: Option<Position>,
) -> Result<(restriction::Decision, Option<DeviceFix>), Fail> {
    let policy = &ctx.cfg.restriction;
    let own = if rekeyed {
        Vec::new()
    } else {
        trail::sightings(ctx.db, new_id)?
    };
    let evidence = NewDeviceEvidence {
        observed: restriction::observe_new_device(&own, ctx.now, policy),
        claimed: claimed.map(|position| DeviceFix {
            position,
            at: ctx.now,
        }),
    };
    // Only the account's established devices say where the owner is and how often they log
    // in: a device still under restriction may be the fraudster's own, and its position
    // would otherwise free the fraudster's next device logging in beside it.
    let established: Vec<DeviceRow> = existing
        .iter()
        .filter(|d| policy::device_restriction(d).is_none_or(|r| !r.is_active(ctx.now)))
        .cloned()
        .collect();
    let last = last_fix_of(ctx, &established)?;
    let window_start = ctx.now.saturating_sub(policy.login_window_secs);
    let mut logins = 0u32;
    for d in &established {
        let (n, _) = trail::logins_since(ctx.db, &d.id, window_start)?;
        logins = logins.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }
    let decision = restriction::decide(policy, evidence, last, logins, ctx.now);
    Ok((decision, evidence.observed))
}

/// Stores the restriction (if any) on the new device and alerts the account's other
/// devices.
fn apply_new_device(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    new: &DeviceRow,
    others: &[DeviceRow],
    decision: restriction::Decision,
    observed: Option<DeviceFix>,
    rekeyed: bool,
) -> Result<Vec<super::Outgoing>, Fail> {
    // A new verdict never cuts short a restriction still in force: re-keying a restricted
    // device asks the policy again, and must not turn 72 h into the habit's 1 h.
    let earlier = rows::device(ctx.db, &new.id)?
        .and_then(|d| policy::device_restriction(&d))
        .filter(|r| r.is_active(ctx.now));
    let active = match (earlier, decision.restriction()) {
        (Some(e), Some(d)) if outlasts(&d, &e) => Some(d),
        (Some(e), _) => Some(e),
        (None, d) => d,
    };
    if let Some(r) = &active {
        let reason = serde_json::to_value(r.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "new_device".into());
        rows::set_restriction(ctx.db, &new.id, r.until, Some(&reason))?;
    }
    ctx.note(format!(
        "new device {} on {}{}: {}",
        new.id,
        account.id,
        if rekeyed { " (new key)" } else { "" },
        serde_json::to_string(&decision).unwrap_or_default()
    ));
    let mut out = Vec::new();
    // Only devices that may move money themselves hear about (and can veto) a new one: a
    // restricted device is no more trusted than the newcomer, and a fraudster's phone must
    // not be able to lock the owner out with "not me".
    let now = ctx.now;
    let trusted = others.iter().filter(|o| {
        policy::device_restriction(o)
            .filter(|r| r.is_active(now))
            .is_none()
    });
    for other in trusted {
        let alert_id = format!("alert-{}", ctx.random_token());
        trail::insert_alert(
            ctx.db,
            &trail::AlertRow {
                id: alert_id.clone(),
                account: account.id.clone(),
                new_device: new.id.clone(),
                new_kid: Some(new.kid.clone()),
                notified: other.id.clone(),
                at: ctx.now,
                answered_at: None,
                outcome: None,
            },
        )?;
        out.push(ctx.push_phone(
            &other.id,
            PhonePush::NewDeviceAlert(NewDeviceAlert {
                alert_id,
                account: account.id.clone(),
                device_id: new.id.clone(),
                device_name: new.name.clone(),
                position: observed.map(|f| f.position),
                at: ctx.now,
                restricted_until: active.and_then(|r| r.until),
            }),
        )?);
    }
    Ok(out)
}

/// Whether restriction `a` ends no earlier than `b` (no end is the latest).
fn outlasts(a: &restriction::ActiveRestriction, b: &restriction::ActiveRestriction) -> bool {
    match (a.until, b.until) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x >= y,
    }
}

/// The last known position of the account's other devices: their latest login with a
/// position, else an estimate from their payments, timed at the newest of them.
fn last_fix_of(ctx: &Ctx<'_>, others: &[DeviceRow]) -> Result<Option<DeviceFix>, Fail> {
    let mut best: Option<DeviceFix> = None;
    let mut payments = Vec::new();
    for d in others {
        let fix = trail::last_login_fix(ctx.db, &d.id)?;
        if let Some(f) = fix
            && best.is_none_or(|b| f.at > b.at)
        {
            best = Some(f);
        }
        payments.extend(trail::sightings(ctx.db, &d.id)?);
    }
    if best.is_some() {
        return Ok(best);
    }
    // The estimate says where the device paid, so it is timed at its newest payment: timed
    // `now`, any far-away login would look like impossible travel. (If that payment is an
    // outlier of the estimate, the fix is younger than its cluster: the safe side.)
    let newest = payments.iter().map(|p| p.at.min(ctx.now)).max();
    Ok(
        restriction::estimate_position(&payments, ctx.now, &ctx.cfg.restriction).map(|p| {
            DeviceFix {
                position: p,
                at: newest.unwrap_or(ctx.now),
            }
        }),
    )
}

fn answer_alert(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    a: &AnswerNewDeviceAlert,
) -> Outcome {
    // A device restricted since the alert was sent may not veto anyone either.
    if let Some(r) = policy::device_restriction(device).filter(|r| r.is_active(ctx.now)) {
        return Err(refuse(
            r.until.map_or(RejectReason::AccountFrozen, |until| {
                RejectReason::Restricted { until }
            }),
            "a restricted device cannot answer new-device alerts",
        ));
    }
    let row = trail::alert(ctx.db, &a.alert_id, &device.id)?;
    let Some(trail::AlertRow {
        new_device,
        new_kid,
        answered_at: answered,
        outcome: first,
        ..
    }) = row
    else {
        // Never echo an unbounded client string back (an id of kilobytes would come back
        // in the `Rejected` and in the audit log).
        let shown: String = a.alert_id.chars().take(64).collect();
        let more = if shown.len() < a.alert_id.len() {
            "…"
        } else {
            ""
        };
        return Err(refuse(
            RejectReason::UnknownAlert,
            format!("no alert {shown}{more} for this device"),
        ));
    };
    // The first answer to an alert is the answer: a "not me" cannot be turned into an
    // approval by answering again, and vice versa. A repeat gets the first outcome again.
    let outcome = match answered {
        Some(_) => {
            ctx.note(format!(
                "alert {} answered again; kept the first answer",
                a.alert_id
            ));
            first
                .and_then(|o| serde_json::from_value(serde_json::Value::String(o)).ok())
                .unwrap_or(AlertOutcome::NothingToLift)
        }
        None if a.not_me => {
            rows::revoke_device(
                ctx.db,
                &new_device,
                &format!("owner answered alert {} with not me", a.alert_id),
                ctx.now,
            )?;
            rows::set_frozen(
                ctx.db,
                &account.id,
                true,
                Some(&format!("not me: alert {}", a.alert_id)),
                ctx.now,
            )?;
            ctx.note(format!(
                "not me: device {new_device} revoked, account {} frozen",
                account.id
            ));
            AlertOutcome::RevokedAndFrozen
        }
        None => approve(ctx, device, account, &new_device, new_kid.as_deref())?,
    };
    if answered.is_none() {
        trail::answer_alert(
            ctx.db,
            &a.alert_id,
            ctx.now,
            a.not_me,
            outcome_name(outcome),
        )?;
    }
    Ok(vec![ctx.push_phone(
        &device.id,
        PhonePush::AlertAnswered(AlertAnswered {
            alert_id: a.alert_id.clone(),
            device_id: new_device,
            outcome,
        }),
    )?])
}

/// "This was me": the established device vouches for the newcomer, which lifts its
/// new-device restriction at once, if it is still the device and key the alert was about.
fn approve(
    ctx: &mut Ctx<'_>,
    by: &DeviceRow,
    account: &AccountRow,
    new_device: &str,
    new_kid: Option<&str>,
) -> Result<AlertOutcome, Fail> {
    let current = rows::device(ctx.db, new_device)?.filter(|d| {
        d.account == account.id
            && d.status == DeviceStatus::Active
            && new_kid.is_some_and(|k| k == d.kid)
    });
    let Some(d) = current else {
        ctx.note(format!(
            "owner approved device {new_device}, which has since been re-keyed or revoked: \
             nothing lifted"
        ));
        return Ok(AlertOutcome::Outdated);
    };
    if policy::device_restriction(&d).is_none_or(|r| !r.is_active(ctx.now)) {
        ctx.note(format!(
            "owner approved device {new_device}; it was not restricted"
        ));
        return Ok(AlertOutcome::NothingToLift);
    }
    rows::set_restriction(ctx.db, &d.id, None, None)?;
    ctx.note(format!(
        "owner approved device {new_device} from {}: restriction lifted",
        by.id
    ));
    Ok(AlertOutcome::Approved)
}

fn outcome_name(o: AlertOutcome) -> &'static str {
    match o {
        AlertOutcome::Approved => "approved",
        AlertOutcome::NothingToLift => "nothing_to_lift",
        AlertOutcome::Outdated => "outdated",
        AlertOutcome::RevokedAndFrozen => "revoked_and_frozen",
    }
}

// ---------------------------------------------------------------------------------------
// Withdrawals
// ---------------------------------------------------------------------------------------

fn register(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    r: &RegisterWithdrawal,
) -> Outcome {
    own_account(ctx, account, &r.account)?;
    gate(ctx, account, device, Function::WithdrawalRegister)?;
    check_amount(account, &r.amount)?;
    if r.amount.currency != ctx.cfg.currency() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!("the ATMs pay out {}", ctx.cfg.currency()),
        ));
    }
    let today = policy::withdrawn_today(
        ctx.db,
        &account.id,
        ctx.now,
        ctx.cfg.network.utc_offset_minutes,
    )?;
    policy::check_limits(
        r.amount,
        today,
        ctx.cfg.withdrawal.per_transaction,
        ctx.cfg.withdrawal.daily,
    )
    .map_err(|reason| refuse(reason, "the amount exceeds a withdrawal limit"))?;
    if !crate::notes::payable(r.amount.minor, &ctx.cfg.network.denominations) {
        return Err(refuse(
            RejectReason::InvalidAmount,
            format!(
                "{} cannot be paid in notes of {:?}",
                r.amount, ctx.cfg.network.denominations
            ),
        ));
    }
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    if available < r.amount.minor {
        return Err(refuse(
            RejectReason::InsufficientFunds,
            format!("available balance is {available}"),
        ));
    }
    let tx_id = TxId(ctx.rng.bytes16());
    let expires_at = ctx.now + ctx.cfg.withdrawal.code_ttl_s;
    let token = CodeToken::issue(ctx.signer.key(), tx_id, expires_at);
    let (qr_png, qr_svg) = if ctx.cfg.withdrawal.qr_images {
        crate::qr::render(&token).map_err(|e| Fail::Store(crate::error::StoreError::Corrupt(e)))?
    } else {
        (String::new(), String::new())
    };
    rows::insert_withdrawal(
        ctx.db,
        &WithdrawalRow {
            tx_id,
            account: account.id.clone(),
            device_id: device.id.clone(),
            amount: r.amount,
            phase: Phase::Registered,
            registered_at: ctx.now,
            code_expires_at: expires_at,
            atm_id: None,
            presented_at: None,
            confirm_by: None,
            challenge: None,
            notes: None,
            order_id: None,
            order_expires_at: None,
            order_payload: None,
            confirmed_at: None,
            confirmed_by: None,
            settled: 0,
            finished_at: None,
            needs_reconciliation: false,
            note: None,
        },
    )?;
    ctx.note(format!("tx {tx_id} registered for {}", r.amount));
    tracing::info!(tx = %tx_id, account = %account.id, amount = %r.amount, "withdrawal registered");
    Ok(vec![ctx.push_phone(
        &device.id,
        PhonePush::CodeIssued(CodeIssued {
            tx_id,
            amount: r.amount,
            token,
            expires_at,
            qr_png,
            qr_svg,
        }),
    )?])
}

fn load_own(ctx: &Ctx<'_>, account: &AccountRow, tx: &TxId) -> Result<WithdrawalRow, Fail> {
    rows::withdrawal(ctx.db, tx)?
        .filter(|w| w.account == account.id)
        .ok_or_else(|| {
            refuse(
                RejectReason::UnknownTransaction,
                format!("no transaction {tx} on this account"),
            )
        })
}

fn wrong_state(w: &WithdrawalRow) -> Fail {
    refuse(
        RejectReason::WrongState {
            state: w.phase.as_str().into(),
        },
        format!("transaction {} is {}", w.tx_id, w.phase),
    )
}

/// A refusal that keeps the effects already made (and sends `extra`).
fn refuse_keeping(reason: RejectReason, message: String, extra: Vec<super::Outgoing>) -> Fail {
    Fail::Refused(Refusal {
        reason,
        message,
        keep_effects: true,
        extra,
    })
}

fn confirm(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    c: &ConfirmWithdrawal,
) -> Outcome {
    let w = load_own(ctx, account, &c.tx_id)?;
    if w.phase != Phase::Presented {
        return Err(wrong_state(&w));
    }
    let confirm_by = w.confirm_by.unwrap_or(0);
    if ctx.now > confirm_by {
        // Late: the session is over either way; end it now rather than at the next sweep.
        let out = match transition(&w.lifecycle(), Event::DeadlinePassed { now: ctx.now }) {
            Ok(step) => steps::apply(ctx, &w, &step, None)?,
            Err(_) => Vec::new(),
        };
        return Err(refuse_keeping(
            RejectReason::ConfirmationTimeout,
            format!("the confirmation deadline {confirm_by} has passed"),
            out,
        ));
    }
    // Dynamic linking: the signature must cover exactly what the hub holds.
    let mismatch = if Some(c.atm_id.as_str()) != w.atm_id.as_deref() {
        Some("atm_id")
    } else if c.amount != w.amount {
        Some("amount")
    } else if Some(c.challenge.as_str()) != w.challenge.as_deref() {
        Some("challenge")
    } else {
        None
    };
    if let Some(field) = mismatch {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: field.into(),
            },
            format!("{field} differs from the transaction"),
        ));
    }
    gate(ctx, account, device, Function::WithdrawalConfirm)?;
    // Only the device that staged the withdrawal was sent the `ConfirmRequest`: another
    // device of the account, even an established one, may not confirm it for it.
    if w.device_id != device.id {
        return Err(refuse(
            RejectReason::TransactionMismatch {
                field: "device_id".into(),
            },
            "only the device that registered this withdrawal may confirm it",
        ));
    }
    let atm_id = w.atm_id.clone().unwrap_or_default();
    let atm = rows::atm(ctx.db, &atm_id)?
        .ok_or_else(|| refuse(RejectReason::UnknownAtm, format!("ATM {atm_id} is gone")))?;
    check_location(ctx, c.position.as_ref(), &atm.position)?;
    check_identity(ctx, account, &w, &c.identity)?;
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    if available < w.amount.minor {
        return Err(refuse(
            RejectReason::InsufficientFunds,
            format!("available balance is {available}"),
        ));
    }
    let step =
        transition(&w.lifecycle(), Event::Confirm { now: ctx.now }).map_err(|e| match e {
            TransitionError::Late => refuse(RejectReason::ConfirmationTimeout, e.to_string()),
            _ => wrong_state(&w),
        })?;
    let mut out = steps::apply(ctx, &w, &step, None)?;
    let order_id = OrderId(ctx.rng.bytes16());
    let expires_at = ctx.now + ctx.cfg.withdrawal.order_ttl_s;
    let order = DispenseOrder {
        order_id,
        tx_id: w.tx_id,
        atm_id: atm_id.clone(),
        amount: w.amount,
        notes: w.notes.clone().unwrap_or_default(),
        expires_at,
    };
    debug_assert!(order.notes_match_amount(), "planned notes must add up");
    if !order.notes_match_amount() {
        return Err(refuse(
            RejectReason::InvalidAmount,
            "the ATM cannot pay this amount",
        ));
    }
    let sealed = ctx.send_atm_until(&atm_id, AtmDown::DispenseOrder(order), expires_at)?;
    let payload = String::from_utf8_lossy(&sealed.payload).into_owned();
    rows::record_order(
        ctx.db, &w.tx_id, &order_id, expires_at, &payload, ctx.now, &device.id,
    )?;
    ctx.note(format!(
        "tx {} confirmed; order {order_id} to {atm_id}",
        w.tx_id
    ));
    tracing::info!(tx = %w.tx_id, order = %order_id, atm = %atm_id, "dispense ordered");
    out.insert(0, sealed);
    Ok(out)
}

fn check_location(ctx: &Ctx<'_>, position: Option<&Position>, atm: &Position) -> Result<(), Fail> {
    let auth = &ctx.cfg.auth;
    let Some(p) = position else {
        if auth.location_required {
            return Err(refuse(
                RejectReason::LocationRequired,
                "the phone's position is required to confirm",
            ));
        }
        return Ok(());
    };
    p.validate()
        .map_err(|e| refuse(RejectReason::Malformed, format!("position: {e}")))?;
    if p.accuracy_m > auth.max_accuracy_m {
        return Err(refuse(
            RejectReason::LocationInaccurate {
                accuracy_m: p.accuracy_m.round() as u64,
                max_m: auth.max_accuracy_m.round() as u64,
            },
            format!(
                "the position is accurate to {:.0} m; at most {:.0} m is accepted",
                p.accuracy_m, auth.max_accuracy_m
            ),
        ));
    }
    let distance = p.min_distance_m(atm);
    if distance > auth.radius_m {
        return Err(refuse(
            RejectReason::TooFarFromAtm {
                distance_m: distance.round() as u64,
                allowed_m: auth.radius_m.round() as u64,
            },
            format!(
                "your phone is {:.0} m from the ATM; confirm at the ATM",
                distance
            ),
        ));
    }
    Ok(())
}

fn check_identity(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    w: &WithdrawalRow,
    id: &IdentityEvidence,
) -> Result<(), Fail> {
    let auth = &ctx.cfg.auth;
    let skew = ctx.cfg.replay.max_skew_s;
    let presented = w.presented_at.unwrap_or(ctx.now);
    let biometric_ok = id.biometric.as_ref().is_some_and(|b| {
        // `verified_at` comes from the wire: saturating, never a panic.
        b.verified_at.saturating_add(skew) >= presented
            && b.verified_at <= ctx.now.saturating_add(skew)
            && ctx.now.saturating_sub(b.verified_at) <= auth.biometric_max_age_s
    });
    let (need_pin, need_bio) = match auth.identity {
        IdentityRule::Pin => (true, false),
        IdentityRule::Biometric => (false, true),
        IdentityRule::PinAndBiometric => (true, true),
        IdentityRule::PinOrBiometric => (id.pin.is_some() || !biometric_ok, false),
    };
    if need_bio && !biometric_ok {
        return Err(refuse(
            RejectReason::IdentityRequired,
            "a fresh biometric check on this phone is required",
        ));
    }
    if !need_pin {
        return Ok(());
    }
    if let Some(locked) = account.pin.locked(ctx.now) {
        return Err(refuse(
            locked,
            "the PIN is locked after too many wrong attempts",
        ));
    }
    let Some(pin) = &id.pin else {
        return Err(refuse(
            RejectReason::IdentityRequired,
            "the PIN is required",
        ));
    };
    let pin = ctx.open_secret(pin, SecretField::Pin)?;
    let correct = ctx.secret_matches(pin.expose(), &account.pin_hash);
    let (state, verdict) =
        account
            .pin
            .attempt(correct, ctx.now, auth.pin_max_failures, auth.pin_lockout_s);
    if state != account.pin {
        rows::save_pin_state(ctx.db, &account.id, &state)?;
    }
    match verdict {
        Ok(()) => Ok(()),
        Err(reason @ RejectReason::PinLocked { .. }) => {
            // The last allowed attempt failed: the session ends at the ATM too.
            let out = match transition(&w.lifecycle(), Event::AuthFailed) {
                Ok(step) => steps::apply(ctx, w, &step, None)?,
                Err(_) => Vec::new(),
            };
            ctx.note(format!(
                "PIN locked on {}; tx {} ended",
                account.id, w.tx_id
            ));
            Err(refuse_keeping(
                reason,
                "wrong PIN; the PIN is now locked".into(),
                out,
            ))
        }
        Err(reason) => Err(refuse_keeping(reason, "wrong PIN".into(), Vec::new())),
    }
}

fn decline(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    d: &DeclineWithdrawal,
) -> Outcome {
    let w = load_own(ctx, account, &d.tx_id)?;
    // "Not me" freezes the account: a device under the new-device restriction (possibly the
    // fraudster's own) may decline, but never lock the owner out.
    let restricted = policy::device_restriction(device).is_some_and(|r| r.is_active(ctx.now));
    let not_me = d.not_me && !restricted;
    if d.not_me && restricted {
        ctx.note(format!(
            "not me from restricted device {}: declined without freezing",
            device.id
        ));
    }
    let step =
        transition(&w.lifecycle(), Event::Decline { not_me }).map_err(|_| wrong_state(&w))?;
    let mut out = steps::apply(ctx, &w, &step, None)?;
    if not_me {
        rows::set_frozen(
            ctx.db,
            &account.id,
            true,
            Some(&format!("not me: withdrawal {}", w.tx_id)),
            ctx.now,
        )?;
        tracing::warn!(account = %account.id, tx = %w.tx_id, "not me: account frozen");
    }
    if !(d.not_me && restricted) {
        ctx.note(format!(
            "tx {} declined{}",
            w.tx_id,
            if not_me {
                " (not me: account frozen)"
            } else {
                ""
            }
        ));
    }
    let (available, _) = books::customer_balances(ctx.db, &account.id)?;
    out.push(ctx.push_phone(
        &device.id,
        PhonePush::Receipt(qrcash_protocol::messages::Receipt {
            reference: w.tx_id.to_string(),
            kind: qrcash_protocol::messages::ReceiptKind::Withdrawal,
            requested: w.amount,
            settled: Amount::new(0, w.amount.currency),
            status: qrcash_protocol::messages::ReceiptStatus::Cancelled,
            balance: Amount::new(available, w.amount.currency),
            at: ctx.now,
        }),
    )?);
    Ok(out)
}
