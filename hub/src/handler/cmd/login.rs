//! `Login`: the password (throttled, checked ahead when it can be), enrolment of the device
//! and its key, and for a new device the restriction.
//!
//! The refusals that need no password come first; then the password, the one check with an
//! effect of its own (a wrong one is counted although the login is refused). Then load (the
//! account's devices, and for a new device [`NewDeviceFacts`]) → decide
//! ([`decide_new_device`], pure, around [`crate::restriction::decide`]) → apply (the device
//! and its login, the restriction, the alerts, the answers).

use qrcash_protocol::messages::{Login, LoginResult, NewDeviceAlert, PhonePush};
use qrcash_protocol::{Position, PublicKey, RejectReason, SecretField};

use crate::handler::guard::refuse_keeping;
use crate::handler::{Ctx, Fail, Outcome, Outgoing, refuse};
use crate::identity;
use crate::restriction::{
    self, ActiveRestriction, DeviceFix, NewDeviceEvidence, RestrictionPolicy, Sighting,
};
use crate::store::rows::{self, AccountRow, DeviceRow, DeviceStatus};
use crate::store::trail;
use crate::throttle::{self, Failures};

pub(in crate::handler) fn login(
    ctx: &mut Ctx<'_>,
    sender: &str,
    device: Option<&DeviceRow>,
    l: &Login,
) -> Outcome {
    if l.device.device_id != sender {
        return Err(refuse(
            RejectReason::WrongAddress,
            "device_id differs from the sender",
        ));
    }
    // A certificate for this id would carry the hub's or the bridge's broker rights.
    if qrcash_protocol::topics::is_reserved(sender, &ctx.cfg.hub_id) {
        return Err(refuse(
            RejectReason::WrongAddress,
            format!("the device id {sender:?} is reserved"),
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
    let mut row = DeviceRow {
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
        // A login keeps whatever restriction the device has; only a new verdict changes it.
        restricted_until: device.and_then(|d| d.restricted_until),
        restriction_reason: device.and_then(|d| d.restriction_reason.clone()),
        revoked_reason: None,
    };

    // Load and decide the new-device restriction.
    let plan = if new_device {
        let mut existing = others.clone();
        existing.extend(device.filter(|_| rekeyed).cloned());
        let facts = load_new_device(ctx, sender, &existing, rekeyed)?;
        Some(decide_new_device(
            &ctx.cfg.restriction,
            &facts,
            l.position,
            device,
            &others,
            ctx.now,
        ))
    } else {
        None
    };

    // Apply.
    rows::upsert_device_login(ctx.db, &row, ctx.now, l.position.as_ref(), new_device)?;
    let mut out = Vec::new();
    match &plan {
        Some(plan) => {
            if let Some(r) = &plan.store {
                let reason = serde_json::to_value(r.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "new_device".into());
                rows::set_restriction(ctx.db, &row.id, r.until, Some(&reason))?;
                row.restricted_until = r.until;
                row.restriction_reason = Some(reason);
            }
            ctx.note(format!(
                "new device {} on {}{}: {}",
                row.id,
                account.id,
                if rekeyed { " (new key)" } else { "" },
                serde_json::to_string(&plan.decision).unwrap_or_default()
            ));
            out.extend(alert(ctx, &account, &row, plan)?);
        }
        None => ctx.note(format!("login of {} to {}", row.id, account.id)),
    }
    let restriction = restriction::effective_restriction(&account, &row, ctx.now).map(|r| r.info());
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

/// What the hub knows, before this login, that bears on a new device: where it saw the
/// device itself (its payments and code presentations, unless it is a re-keyed device, whose
/// history is its previous owner's), and of the account's established devices, their latest
/// reported positions, where they paid, and how often they logged in.
#[derive(Debug, Default)]
struct NewDeviceFacts {
    own: Vec<Sighting>,
    fixes: Vec<DeviceFix>,
    payments: Vec<Sighting>,
    logins: u32,
}

/// Loads the [`NewDeviceFacts`]. Only the account's established devices say where the owner
/// is and how often they log in: a device still under restriction may be the fraudster's
/// own, and its position would otherwise free the fraudster's next device logging in beside
/// it.
fn load_new_device(
    ctx: &Ctx<'_>,
    new_id: &str,
    existing: &[DeviceRow],
    rekeyed: bool,
) -> Result<NewDeviceFacts, Fail> {
    let mut facts = NewDeviceFacts::default();
    if !rekeyed {
        facts.own = trail::sightings(ctx.db, new_id)?;
    }
    let window_start = ctx
        .now
        .saturating_sub(ctx.cfg.restriction.login_window_secs);
    for d in existing.iter().filter(|d| established(d, ctx.now)) {
        facts.fixes.extend(trail::last_login_fix(ctx.db, &d.id)?);
        facts.payments.extend(trail::sightings(ctx.db, &d.id)?);
        let (n, _) = trail::logins_since(ctx.db, &d.id, window_start)?;
        facts.logins = facts
            .logins
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }
    Ok(facts)
}

/// Whether a device is under no restriction of its own at `now`.
fn established(d: &DeviceRow, now: u64) -> bool {
    restriction::device_restriction(d).is_none_or(|r| !r.is_active(now))
}

/// What a new device's login does.
#[derive(Debug)]
struct NewDevicePlan {
    /// The policy's verdict.
    decision: restriction::Decision,
    /// Where the hub saw the device itself: the only position the owner's alert shows (a
    /// claim would put the owner's own neighbourhood on a fraudster's alert).
    observed: Option<DeviceFix>,
    /// The restriction to store on the device, if any.
    store: Option<ActiveRestriction>,
    /// The devices to alert: those that may move money themselves. A restricted device is
    /// no more trusted than the newcomer, and a fraudster's phone must not be able to lock
    /// the owner out with "not me".
    notify: Vec<String>,
}

/// The pure decision for a new device: [`restriction::decide`] on the evidence, kept at
/// least as long as a restriction `device` is still under (re-keying a restricted device
/// asks the policy again, and must not turn 72 h into the habit's 1 h), and who is told.
fn decide_new_device(
    policy: &RestrictionPolicy,
    facts: &NewDeviceFacts,
    claimed: Option<Position>,
    device: Option<&DeviceRow>,
    others: &[DeviceRow],
    now: u64,
) -> NewDevicePlan {
    let evidence = NewDeviceEvidence {
        observed: restriction::observe_new_device(&facts.own, now, policy),
        claimed: claimed.map(|position| DeviceFix { position, at: now }),
    };
    let last = last_fix(facts, policy, now);
    let decision = restriction::decide(policy, evidence, last, facts.logins, now);
    let earlier = device
        .and_then(restriction::device_restriction)
        .filter(|r| r.is_active(now));
    let store = match (earlier, decision.restriction()) {
        (Some(e), Some(d)) if outlasts(&d, &e) => Some(d),
        (Some(e), _) => Some(e),
        (None, d) => d,
    };
    NewDevicePlan {
        decision,
        observed: evidence.observed,
        store,
        notify: others
            .iter()
            .filter(|o| established(o, now))
            .map(|o| o.id.clone())
            .collect(),
    }
}

/// Alerts the devices of the plan about the new one.
fn alert(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    new: &DeviceRow,
    plan: &NewDevicePlan,
) -> Result<Vec<Outgoing>, Fail> {
    let mut out = Vec::new();
    for other in &plan.notify {
        let alert_id = format!("alert-{}", ctx.random_token());
        trail::insert_alert(
            ctx.db,
            &trail::AlertRow {
                id: alert_id.clone(),
                account: account.id.clone(),
                new_device: new.id.clone(),
                new_kid: Some(new.kid.clone()),
                notified: other.clone(),
                at: ctx.now,
                answered_at: None,
                outcome: None,
            },
        )?;
        out.push(ctx.push_phone(
            other,
            PhonePush::NewDeviceAlert(NewDeviceAlert {
                alert_id,
                account: account.id.clone(),
                device_id: new.id.clone(),
                device_name: new.name.clone(),
                position: plan.observed.map(|f| f.position),
                at: ctx.now,
                restricted_until: plan.store.and_then(|r| r.until),
            }),
        )?);
    }
    Ok(out)
}

/// Whether restriction `a` ends no earlier than `b` (no end is the latest).
fn outlasts(a: &ActiveRestriction, b: &ActiveRestriction) -> bool {
    match (a.until, b.until) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x >= y,
    }
}

/// The last known position of the established devices: their latest login with a
/// position, else an estimate from their payments, timed at the newest of them.
fn last_fix(facts: &NewDeviceFacts, policy: &RestrictionPolicy, now: u64) -> Option<DeviceFix> {
    let best = facts
        .fixes
        .iter()
        .copied()
        .reduce(|b, f| if f.at > b.at { f } else { b });
    if best.is_some() {
        return best;
    }
    // The estimate says where the device paid, so it is timed at its newest payment: timed
    // `now`, any far-away login would look like impossible travel. (If that payment is an
    // outlier of the estimate, the fix is younger than its cluster: the safe side.)
    let newest = facts.payments.iter().map(|p| p.at.min(now)).max();
    restriction::estimate_position(&facts.payments, now, policy).map(|p| DeviceFix {
        position: p,
        at: newest.unwrap_or(now),
    })
}
